"""The asyncio Kubernetes client: the few API calls the operator makes (the blocking client runs in worker threads).

Every failure is a `KubeError` (kube/errors.py); an absent object is None or False where the caller expects that.
Configuration: kube/config.py (in a pod its ServiceAccount; otherwise $KUBECONFIG or ~/.kube/config), the same as
kopf's login.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as pysecrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from cdi_operator.api.json import JSON
from cdi_operator.api.models import GROUP, VERSION, SecretKeyRef
from cdi_operator.kube.errors import Conflict, Forbidden, KubeError, NotFound, api_error
from cdi_operator.kube.secrets import decode, encode

FIELD_MANAGER = "cdi-operator"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "cdi-operator"
# Labels kustomize-controller puts on every object it applies, naming its Kustomization.
FLUX_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
FLUX_KUSTOMIZATION = ("kustomize.toolkit.fluxcd.io", "v1")


async def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a worker thread; an ApiException becomes the KubeError for its status."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except ApiException as exc:
        raise api_error(exc, what) from None


async def _apply(patch: Callable[..., Any], manifest: JSON) -> Any:
    """Server-side apply of `manifest` with `patch` (the kind's patch_namespaced_… call), owning its fields."""
    meta = manifest["metadata"]
    what = f"{manifest.get('kind', 'object')} {meta['namespace']}/{meta['name']}"
    return await _call(
        what,
        patch,
        meta["name"],
        meta["namespace"],
        manifest,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type=APPLY_PATCH,
    )


@dataclass(frozen=True)
class Caller:
    """Who a bearer token belongs to, as a TokenReview answered (never the token itself)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


def _custom(plural: str, namespace: str | None, name: str = "") -> str:
    return f"{plural}.{GROUP} {namespace}/{name}" if namespace else f"{plural}.{GROUP}"


class KubeApi:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.leases = client.CoordinationV1Api(api_client)
        self.authn = client.AuthenticationV1Api(api_client)
        self.authz = client.AuthorizationV1Api(api_client)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    # --- custom resources ---

    async def get(self, plural: str, namespace: str, name: str) -> JSON | None:
        try:
            obj = await _call(
                _custom(plural, namespace, name),
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
            )
        except NotFound:
            return None
        return cast(JSON, obj)

    async def list_objects(self, plural: str, namespace: str | None) -> list[JSON]:
        what = _custom(plural, namespace)
        if namespace is None:
            result = await _call(what, self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
        else:
            result = await _call(what, self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural)
        return cast(list[JSON], cast(JSON, result).get("items", []))

    async def patch_status(
        self, plural: str, namespace: str, name: str, patch: JSON, resource_version: str | None = None
    ) -> JSON:
        """A JSON merge patch of the status subresource (lists in it are replaced whole); with `resource_version`
        the API server refuses it (`Conflict`) when the object changed since."""
        body: JSON = {"status": patch}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return cast(
            JSON,
            await _call(
                _custom(plural, namespace, name) + " status",
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                _content_type=MERGE_PATCH,
            ),
        )

    async def patch(self, plural: str, namespace: str, name: str, patch: JSON) -> JSON:
        """A JSON merge patch of the object (include metadata.resourceVersion for optimistic concurrency)."""
        return cast(
            JSON,
            await _call(
                _custom(plural, namespace, name),
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                patch,
                _content_type=MERGE_PATCH,
            ),
        )

    # --- secrets ---

    async def secret_values(self, namespace: str, refs: Iterable[SecretKeyRef]) -> dict[tuple[str, str], str]:
        """The values of `refs` that exist; absent Secrets or keys are left out (connect() names them)."""
        values: dict[tuple[str, str], str] = {}
        cache: dict[str, JSON | None] = {}
        for ref in refs:
            if ref.name not in cache:
                try:
                    secret = await _call(
                        f"Secret {namespace}/{ref.name}", self.core.read_namespaced_secret, ref.name, namespace
                    )
                    cache[ref.name] = secret.data or {}
                except (Forbidden, NotFound):
                    cache[ref.name] = None
            data = cache[ref.name]
            if data and ref.key in data:
                value = decode(data[ref.key])
                if value is not None:
                    values[(ref.name, ref.key)] = value
        return values

    async def read_secret(self, namespace: str, name: str) -> JSON | None:
        """A Secret's decoded `data` (keys that are not UTF-8 text left out), annotations, owner references
        (uid, kind) and resourceVersion; None when there is none."""
        try:
            secret = await _call(f"Secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace)
        except NotFound:
            return None
        data: dict[str, str] = {}
        for key, raw in (secret.data or {}).items():
            value = decode(raw)
            if value is not None:
                data[key] = value
        meta = secret.metadata
        owners = [{"uid": r.uid, "kind": r.kind} for r in (meta.owner_references if meta else None) or []]
        return {
            "data": data,
            "annotations": dict((meta.annotations if meta else None) or {}),
            "ownerReferences": owners,
            "resourceVersion": meta.resource_version if meta else None,
        }

    async def create_secret(self, body: JSON) -> None:
        """Create a Secret; `body["stringData"]` is encoded into `data` here."""
        meta = body["metadata"]
        manifest = {k: v for k, v in body.items() if k != "stringData"}
        manifest["data"] = {k: encode(v) for k, v in (body.get("stringData") or {}).items()}
        create: Any = self.core.create_namespaced_secret
        await _call(f"Secret {meta['namespace']}/{meta['name']}", create, meta["namespace"], manifest)

    async def patch_secret(self, namespace: str, name: str, string_data: dict[str, str | None], metadata: JSON) -> None:
        """A merge patch of a Secret's `metadata` and `data` (from `string_data`; a None value deletes the key)."""
        patch = {
            "metadata": metadata,
            "data": {k: None if v is None else encode(v) for k, v in string_data.items()},
        }
        await _call(f"Secret {namespace}/{name}", self.core.patch_namespaced_secret, name, namespace, patch)

    # --- CronJobs and Jobs ---

    async def get_cronjob(self, namespace: str, name: str) -> JSON | None:
        try:
            obj = await _call(f"CronJob {namespace}/{name}", self.batch.read_namespaced_cron_job, name, namespace)
        except NotFound:
            return None
        return cast(JSON, self._plain(obj))

    async def apply_cronjob(self, manifest: JSON) -> JSON:
        """Server-side apply: creates or updates, idempotent, owns exactly the fields in `manifest`."""
        return cast(JSON, self._plain(await _apply(self.batch.patch_namespaced_cron_job, manifest)))

    async def suspend_cronjob(self, namespace: str, name: str) -> bool:
        """Set spec.suspend on an existing CronJob; False when there is none."""
        try:
            await _call(
                f"CronJob {namespace}/{name}",
                self.batch.patch_namespaced_cron_job,
                name,
                namespace,
                {"spec": {"suspend": True}},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )
        except NotFound:
            return False
        return True

    async def apply_runner_access(self, manifests: list[JSON]) -> None:
        """Server-side apply of a runner's ServiceAccount, Role, RoleBinding and run Lease (runner_access.py)."""
        patchers: dict[str, Any] = {
            "ServiceAccount": self.core.patch_namespaced_service_account,
            "Role": self.rbac.patch_namespaced_role,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
            "Lease": self.leases.patch_namespaced_lease,
        }
        for manifest in manifests:
            await _apply(patchers[manifest["kind"]], manifest)

    async def get_lease(self, namespace: str, name: str) -> JSON | None:
        try:
            lease = await _call(f"Lease {namespace}/{name}", self.leases.read_namespaced_lease, name, namespace)
        except NotFound:
            return None
        return cast(JSON, self._plain(lease))

    async def list_jobs(self, namespace: str, selector: str) -> list[JSON]:
        result = await _call(f"Jobs in {namespace}", self.batch.list_namespaced_job, namespace, label_selector=selector)
        return [cast(JSON, self._plain(j)) for j in result.items]

    async def create_job(self, manifest: JSON) -> bool:
        """Create a Job; False when one of that name exists already (created before a restart)."""
        meta = manifest["metadata"]
        try:
            create: Any = self.batch.create_namespaced_job
            await _call(f"Job {meta['namespace']}/{meta['name']}", create, meta["namespace"], manifest)
        except Conflict:
            return False
        return True

    # --- events ---

    async def event(self, obj: JSON, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj` (never with a secret value in `message`).

        A Warning is also posted on the Flux Kustomization that applied `obj`, if any: Flux's failed health check
        names the object but not its message, and `kubectl describe kustomization` shows that Kustomization's
        Events.
        """
        await self._post_event(obj, type_, reason, message)
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        name, namespace = labels.get(FLUX_NAME_LABEL), labels.get(FLUX_NAMESPACE_LABEL)
        if type_ != "Warning" or not name or not namespace:
            return
        group, version = FLUX_KUSTOMIZATION
        try:
            get: Any = self.custom.get_namespaced_custom_object
            kustomization = await _call("its Kustomization", get, group, version, namespace, "kustomizations", name)
        except KubeError:  # not readable (RBAC, operator.watchNamespaces) or gone: the object's own Event stays
            return
        where = f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}"
        await self._post_event(kustomization, type_, reason, f"{where}: {message}")

    async def _post_event(self, obj: JSON, type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata", {})
        now = datetime.now(UTC)
        namespace = str(meta.get("namespace", "default"))
        body: JSON = {
            "metadata": {
                "name": f"{meta.get('name', 'object')[:200]}.{pysecrets.token_hex(8)}",
                "namespace": meta.get("namespace", "default"),
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(KubeError):  # an Event is best effort
            create: Any = self.core.create_namespaced_event
            await _call(f"Event {namespace}", create, namespace, body)

    # --- who is calling, and what they may do ---

    async def review_token(self, token: str) -> Caller | None:
        """The user a bearer token authenticates (TokenReview), or None when the apiserver refuses the token."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        create: Any = self.authn.create_token_review
        review = await _call("TokenReview", create, body)
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        user = status.user
        return Caller(
            username=user.username,
            uid=user.uid or "",
            groups=tuple(user.groups or ()),
            extra={k: list(v) for k, v in (user.extra or {}).items()},
        )

    async def may(self, caller: Caller, verb: str, plural: str, namespace: str, name: str | None = None) -> bool:
        """Whether RBAC lets `caller` `verb` the `plural` of our group in `namespace` (that object, with `name`;
        any of them, without): a SubjectAccessReview."""
        attributes: JSON = {"namespace": namespace, "verb": verb, "group": GROUP, "resource": plural}
        if name is not None:
            attributes["name"] = name
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": caller.username,
                "uid": caller.uid or None,
                "groups": list(caller.groups),
                "extra": caller.extra or None,
                "resourceAttributes": attributes,
            },
        }
        create: Any = self.authz.create_subject_access_review
        review = await _call(f"SubjectAccessReview of {verb} {plural} in {namespace}", create, body)
        return bool(review.status is not None and review.status.allowed)
