"""The few Kubernetes API calls the operator makes, async (the blocking client runs in worker threads).

Configuration: cdi_operator.kube.load_config (in a pod its ServiceAccount; otherwise $KUBECONFIG or ~/.kube/config),
the same as kopf's login.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import secrets as pysecrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from cdi_operator.api.json import JSON
from cdi_operator.api.models import GROUP, VERSION, SecretKeyRef

CDI, WHC = "cdiintegrations", "warehousecredentials"
FIELD_MANAGER = "cdi-operator"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "cdi-operator"


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, ApiException) and exc.status in codes


class KubeApi:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    # --- custom resources ---

    async def get(self, plural: str, namespace: str, name: str) -> JSON | None:
        try:
            obj = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(JSON, obj)

    async def list_objects(self, plural: str, namespace: str | None) -> list[JSON]:
        if namespace is None:
            result = await asyncio.to_thread(self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
        else:
            result = await asyncio.to_thread(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
            )
        return cast(list[JSON], cast(JSON, result).get("items", []))

    async def patch_status(self, plural: str, namespace: str, name: str, patch: JSON) -> JSON:
        """A JSON merge patch of the status subresource (lists in it are replaced whole)."""
        return cast(
            JSON,
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": patch},
                _content_type=MERGE_PATCH,
            ),
        )

    async def patch(self, plural: str, namespace: str, name: str, patch: JSON) -> JSON:
        """A JSON merge patch of the object (include metadata.resourceVersion for optimistic concurrency)."""
        return cast(
            JSON,
            await asyncio.to_thread(
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
                    secret = await asyncio.to_thread(self.core.read_namespaced_secret, ref.name, namespace)
                    cache[ref.name] = secret.data or {}
                except ApiException as exc:
                    if exc.status not in (403, 404):
                        raise
                    cache[ref.name] = None
            data = cache[ref.name]
            if data and ref.key in data:
                try:
                    values[(ref.name, ref.key)] = base64.b64decode(data[ref.key]).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    continue
        return values

    # --- CronJobs and Jobs ---

    async def get_cronjob(self, namespace: str, name: str) -> JSON | None:
        try:
            obj = await asyncio.to_thread(self.batch.read_namespaced_cron_job, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(JSON, self._plain(obj))

    async def apply_cronjob(self, manifest: JSON) -> JSON:
        """Server-side apply: creates or updates, idempotent, owns exactly the fields in `manifest`."""
        obj = await asyncio.to_thread(
            self.batch.patch_namespaced_cron_job,
            manifest["metadata"]["name"],
            manifest["metadata"]["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )
        return cast(JSON, self._plain(obj))

    async def apply_runner_access(self, manifests: list[JSON]) -> None:
        """Server-side apply of a runner's ServiceAccount, Role and RoleBinding (controller/runner_access.py)."""
        patchers: dict[str, Any] = {
            "ServiceAccount": self.core.patch_namespaced_service_account,
            "Role": self.rbac.patch_namespaced_role,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
        }
        for manifest in manifests:
            meta = manifest["metadata"]
            await asyncio.to_thread(
                patchers[manifest["kind"]],
                meta["name"],
                meta["namespace"],
                manifest,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )

    async def list_jobs(self, namespace: str, selector: str) -> list[JSON]:
        result = await asyncio.to_thread(self.batch.list_namespaced_job, namespace, label_selector=selector)
        return [cast(JSON, self._plain(j)) for j in result.items]

    async def create_job(self, manifest: JSON) -> bool:
        """Create a Job; False when one of that name exists already (created before a restart)."""
        try:
            create: Any = self.batch.create_namespaced_job
            await asyncio.to_thread(create, manifest["metadata"]["namespace"], manifest)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # --- events ---

    async def event(self, obj: JSON, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj` (never with a secret value in `message`)."""
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
        with contextlib.suppress(ApiException):  # an Event is best effort
            create: Any = self.core.create_namespaced_event
            await asyncio.to_thread(create, namespace, body)


async def suspend_cronjob(kube: KubeApi, namespace: str, name: str) -> bool:
    """Set spec.suspend on an existing CronJob; False when there is none."""
    try:
        await asyncio.to_thread(
            kube.batch.patch_namespaced_cron_job,
            name,
            namespace,
            {"spec": {"suspend": True}},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
