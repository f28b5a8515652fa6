"""The blocking Kubernetes client: the runner's calls (its CdiIntegration, the Secrets it names, status patches) and
the operator's leader Lease. Every failure is a `KubeError` (kube/errors.py)."""

from __future__ import annotations

from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from cdi_operator.api.json import JSON
from cdi_operator.api.models import GROUP, VERSION
from cdi_operator.kube.errors import InvalidSecret, api_error
from cdi_operator.kube.secrets import decode

MERGE_PATCH = "application/merge-patch+json"


class Kube:
    """Blocking API calls; `forbidden_hint` is added to a 403's message (what the caller's user should grant)."""

    def __init__(self, api_client: client.ApiClient, forbidden_hint: str | None = None) -> None:
        self.api_client = api_client
        self.forbidden_hint = forbidden_hint
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._coordination: Any = client.CoordinationV1Api(api_client)  # dict bodies: serialized as JSON

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _plain(self, obj: Any) -> JSON:
        return dict(self.api_client.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    def get_custom(self, plural: str, namespace: str, name: str) -> JSON:
        try:
            obj = cast(JSON, self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))
        except ApiException as exc:
            raise api_error(exc, f"{plural}.{GROUP} {namespace}/{name}", self.forbidden_hint) from None
        return obj

    def get_secret_value(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of `key` in Secret `namespace/name`."""
        what = f"Secret {namespace}/{name}"
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            raise api_error(exc, what, self.forbidden_hint) from None
        data = secret.data or {}
        if key not in data:
            raise InvalidSecret(None, f"{what} has no key {key!r}; add it or fix the secret reference's key")
        value = decode(data[key])
        if value is None:
            raise InvalidSecret(None, f"{what}: key {key!r} is not UTF-8 text")
        return value

    def patch_status(self, plural: str, namespace: str, name: str, status: JSON, resource_version: str | None) -> JSON:
        """JSON-merge-patch `status` into the object's /status; with `resource_version` the API server refuses
        the patch (`Conflict`) when the object changed since. Returns the updated object."""
        body: JSON = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            obj = cast(
                JSON,
                self._custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH
                ),
            )
        except ApiException as exc:
            raise api_error(exc, f"{plural}.{GROUP} {namespace}/{name} status", self.forbidden_hint) from None
        return obj

    # --- coordination.k8s.io Leases ---

    def read_lease(self, namespace: str, name: str) -> JSON | None:
        """The Lease as plain JSON; None when there is none."""
        try:
            lease = self._coordination.read_namespaced_lease(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(exc, f"Lease {namespace}/{name}", self.forbidden_hint) from None
        return self._plain(lease)

    def create_lease(self, namespace: str, body: JSON) -> JSON:
        try:
            lease = self._coordination.create_namespaced_lease(namespace, body)
        except ApiException as exc:
            raise api_error(exc, f"Lease {namespace}/{body['metadata']['name']}", self.forbidden_hint) from None
        return self._plain(lease)

    def replace_lease(self, namespace: str, name: str, body: JSON) -> JSON:
        """Replace the Lease; with `metadata.resourceVersion` in `body`, only over that version (else `Conflict`)."""
        try:
            lease = self._coordination.replace_namespaced_lease(name, namespace, body)
        except ApiException as exc:
            raise api_error(exc, f"Lease {namespace}/{name}", self.forbidden_hint) from None
        return self._plain(lease)
