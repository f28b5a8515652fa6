"""An in-memory fake of `cdi_operator.kube.aio.KubeApi`, the one layer the reconcilers talk to Kubernetes through.

It keeps what the apiserver would (custom objects with uid, generation, resourceVersion and finalizer-driven
deletion; Secrets; CronJobs; Jobs; Events) and answers with the same values and `KubeError`s as the real class:
None or False for an absent object, `NotFound` / `Conflict` for a patch on a missing object or a stale
resourceVersion, merge-patch semantics (lists replaced whole, null deletes a key). Every write is recorded in
`writes`, so a test can count the status patches of one reconcile.

It subclasses KubeApi without its client: a method someone adds to KubeApi and not here fails loudly (no
`custom`/`core`/`batch` attribute) instead of reaching a network.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdi_operator.api.models import API_VERSION, SecretKeyRef
from cdi_operator.controller.status import merged
from cdi_operator.kube.aio import KubeApi
from cdi_operator.kube.errors import Conflict, NotFound

JSON = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the apiserver applies `application/merge-patch+json`, sharing nothing."""
    return copy.deepcopy(merged(target, patch))


@dataclass(frozen=True)
class Event:
    kind: str
    name: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Write:
    verb: str  # patch_status, patch, apply_cronjob, suspend_cronjob, create_job, create_secret, patch_secret, …
    what: str  # "plural/namespace/name" or "Kind/namespace/name"
    body: Any


class FakeKube(KubeApi):
    """See the module docstring. Objects go in with `add`; what the reconcilers did is in `writes` and `events`."""

    def __init__(self) -> None:  # no client: every method the reconcilers use is overridden
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.secrets: dict[tuple[str, str], JSON] = {}
        self.cronjobs: dict[tuple[str, str], JSON] = {}
        self.jobs: dict[tuple[str, str], JSON] = {}
        self.runner_access: dict[tuple[str, str, str], JSON] = {}
        self.events: list[Event] = []
        self.writes: list[Write] = []
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)

    def close(self) -> None:
        pass

    def _version(self) -> str:
        return str(next(self._versions))

    # --- set-up and inspection -----------------------------------------------------------------------------

    def add(self, plural: str, obj: JSON) -> JSON:
        """Create a custom object as `kubectl apply` would: uid, generation 1, resourceVersion, creation time."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["generation"] = meta.get("generation", 1)
        meta["resourceVersion"] = self._version()
        obj.setdefault("apiVersion", API_VERSION)
        self.objects[(plural, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def obj(self, plural: str, namespace: str, name: str) -> JSON:
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def status(self, plural: str, namespace: str, name: str) -> JSON:
        return dict(self.objects[(plural, namespace, name)].get("status") or {})

    def update_spec(self, plural: str, namespace: str, name: str, spec: JSON) -> None:
        """A user's change of the spec (a merge patch): generation goes up, as for any CRD with a status."""
        obj = self.objects[(plural, namespace, name)]
        obj["spec"] = merge_patch(obj.get("spec"), spec)
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = self._version()

    def annotate(self, plural: str, namespace: str, name: str, **annotations: str) -> None:
        meta = self.objects[(plural, namespace, name)]["metadata"]
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
        meta["resourceVersion"] = self._version()

    def delete(self, plural: str, namespace: str, name: str) -> None:
        """What a DELETE does: gone at once without finalizers, else deletionTimestamp set until they are removed."""
        obj = self.objects[(plural, namespace, name)]
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["deletionTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj["metadata"]["resourceVersion"] = self._version()
        else:
            del self.objects[(plural, namespace, name)]

    def writes_of(self, verb: str) -> list[Write]:
        return [w for w in self.writes if w.verb == verb]

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def set_job_status(self, namespace: str, name: str, status: JSON) -> None:
        self.jobs[(namespace, name)]["status"] = status

    # --- custom resources ----------------------------------------------------------------------------------

    async def get(self, plural: str, namespace: str, name: str) -> JSON | None:
        obj = self.objects.get((plural, namespace, name))
        return None if obj is None else copy.deepcopy(obj)

    async def list_objects(self, plural: str, namespace: str | None) -> list[JSON]:
        return [
            copy.deepcopy(obj)
            for (p, ns, _), obj in sorted(self.objects.items())
            if p == plural and (namespace is None or ns == namespace)
        ]

    def _existing(self, plural: str, namespace: str, name: str) -> JSON:
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            raise NotFound(404, f"{plural}.cdi.ingest.dev {namespace}/{name}: not found")
        return obj

    async def patch_status(
        self, plural: str, namespace: str, name: str, patch: JSON, resource_version: str | None = None
    ) -> JSON:
        obj = self._existing(plural, namespace, name)
        if resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, f"{plural}.cdi.ingest.dev {namespace}/{name}: the object has been modified")
        self.writes.append(Write("patch_status", f"{plural}/{namespace}/{name}", copy.deepcopy(patch)))
        obj["status"] = merge_patch(obj.get("status"), patch)
        obj["metadata"]["resourceVersion"] = self._version()
        return copy.deepcopy(obj)

    async def patch(self, plural: str, namespace: str, name: str, patch: JSON) -> JSON:
        obj = self._existing(plural, namespace, name)
        patch = copy.deepcopy(patch)
        wanted = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, f"{plural}.cdi.ingest.dev {namespace}/{name}: the object has been modified")
        self.writes.append(Write("patch", f"{plural}/{namespace}/{name}", patch))
        merged = merge_patch(obj, patch)
        merged["metadata"]["resourceVersion"] = self._version()
        if merged["metadata"].get("deletionTimestamp") and not merged["metadata"].get("finalizers"):
            del self.objects[(plural, namespace, name)]
        else:
            self.objects[(plural, namespace, name)] = merged
        return copy.deepcopy(merged)

    # --- secrets (kept decoded: what read_secret returns) --------------------------------------------------

    def add_secret(self, namespace: str, name: str, data: dict[str, str], **extra: Any) -> None:
        self.secrets[(namespace, name)] = {
            "data": dict(data),
            "annotations": dict(extra.get("annotations") or {}),
            "ownerReferences": list(extra.get("ownerReferences") or []),
            "resourceVersion": self._version(),
            "labels": dict(extra.get("labels") or {}),
        }

    async def secret_values(self, namespace: str, refs: Any) -> dict[tuple[str, str], str]:
        values: dict[tuple[str, str], str] = {}
        for ref in refs:
            assert isinstance(ref, SecretKeyRef)
            secret = self.secrets.get((namespace, ref.name))
            if secret is not None and ref.key in secret["data"]:
                values[(ref.name, ref.key)] = secret["data"][ref.key]
        return values

    async def read_secret(self, namespace: str, name: str) -> JSON | None:
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        return {k: copy.deepcopy(secret[k]) for k in ("data", "annotations", "ownerReferences", "resourceVersion")}

    async def create_secret(self, body: JSON) -> None:
        meta = body["metadata"]
        if (meta["namespace"], meta["name"]) in self.secrets:
            raise Conflict(409, f"Secret {meta['namespace']}/{meta['name']}: already exists")
        self.writes.append(Write("create_secret", f"Secret/{meta['namespace']}/{meta['name']}", None))
        owners = [{"uid": r["uid"], "kind": r["kind"]} for r in meta.get("ownerReferences") or []]
        self.add_secret(
            meta["namespace"],
            meta["name"],
            dict(body.get("stringData") or {}),
            annotations=meta.get("annotations"),
            ownerReferences=owners,
            labels=meta.get("labels"),
        )

    async def patch_secret(self, namespace: str, name: str, string_data: dict[str, str | None], metadata: JSON) -> None:
        secret = self.secrets.get((namespace, name))
        if secret is None:
            raise NotFound(404, f"Secret {namespace}/{name}: not found")
        metadata = dict(metadata)
        wanted = metadata.pop("resourceVersion", None)
        if wanted is not None and wanted != secret["resourceVersion"]:
            raise Conflict(409, f"Secret {namespace}/{name}: the object has been modified")
        self.writes.append(Write("patch_secret", f"Secret/{namespace}/{name}", None))
        secret["data"] = merge_patch(secret["data"], string_data)
        secret["annotations"] = merge_patch(secret["annotations"], metadata.get("annotations") or {})
        secret["resourceVersion"] = self._version()

    # --- CronJobs, Jobs, runner access ---------------------------------------------------------------------

    async def get_cronjob(self, namespace: str, name: str) -> JSON | None:
        cronjob = self.cronjobs.get((namespace, name))
        return None if cronjob is None else copy.deepcopy(cronjob)

    async def apply_cronjob(self, manifest: JSON) -> JSON:
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        self.writes.append(Write("apply_cronjob", f"CronJob/{key[0]}/{key[1]}", copy.deepcopy(manifest)))
        old = self.cronjobs.get(key) or {}
        applied = copy.deepcopy(manifest)
        applied["metadata"]["uid"] = (old.get("metadata") or {}).get("uid") or f"uid-{next(self._uids)}"
        self.cronjobs[key] = applied
        return copy.deepcopy(applied)

    async def suspend_cronjob(self, namespace: str, name: str) -> bool:
        cronjob = self.cronjobs.get((namespace, name))
        if cronjob is None:
            return False
        self.writes.append(Write("suspend_cronjob", f"CronJob/{namespace}/{name}", None))
        cronjob["spec"]["suspend"] = True
        return True

    async def apply_runner_access(self, manifests: list[JSON]) -> None:
        for manifest in manifests:
            meta = manifest["metadata"]
            key = (manifest["kind"], meta["namespace"], meta["name"])
            self.writes.append(Write("apply_runner_access", "/".join(key), copy.deepcopy(manifest)))
            self.runner_access[key] = copy.deepcopy(manifest)

    async def list_jobs(self, namespace: str, selector: str) -> list[JSON]:
        label, _, value = selector.partition("=")
        return [
            copy.deepcopy(job)
            for (ns, _), job in sorted(self.jobs.items())
            if ns == namespace and ((job["metadata"].get("labels") or {}).get(label) == value)
        ]

    async def create_job(self, manifest: JSON) -> bool:
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self.jobs:
            return False
        self.writes.append(Write("create_job", f"Job/{key[0]}/{key[1]}", copy.deepcopy(manifest)))
        self.jobs[key] = {**copy.deepcopy(manifest), "status": {}}
        return True

    # --- events --------------------------------------------------------------------------------------------

    async def event(self, obj: JSON, type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        self.events.append(Event(str(obj.get("kind")), str(meta.get("name")), type_, reason, message[:1024]))
