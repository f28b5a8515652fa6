"""Kubernetes access: the client configuration (operator and runner alike) and the few calls the runner makes.

Configuration, first match wins:

1. `$CDI_SERVICEACCOUNT_DIR` (a directory with `token`, `ca.crt`, `namespace`) with `$KUBERNETES_SERVICE_HOST` /
   `$KUBERNETES_SERVICE_PORT`: a pod whose ServiceAccount files are not at the standard path (the e2e local kubelet).
2. The standard in-cluster path `/var/run/secrets/kubernetes.io/serviceaccount`.
3. A kubeconfig (`$KUBECONFIG`, else `~/.kube/config`), for local use.

The token file is re-read every minute (bound tokens are rotated by the kubelet), by the kubernetes client's
in-cluster loader.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

GROUP, VERSION = "cdi.ingest.dev", "v1alpha1"
CDI_PLURAL, WHC_PLURAL = "cdiintegrations", "warehousecredentials"
SERVICEACCOUNT_DIR_ENV = "CDI_SERVICEACCOUNT_DIR"
STANDARD_SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A failed API call, with the HTTP status and a message naming the object (never its data)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Conflict(KubeError):
    """HTTP 409: the object changed since the resourceVersion sent."""


@dataclass(frozen=True)
class KubeConfig:
    api_client: client.ApiClient
    namespace: str | None  # the pod's namespace, when running in a pod
    source: str  # "serviceaccount-dir", "in-cluster" or "kubeconfig"


def load_config() -> KubeConfig:
    """A client for the first configuration that applies (see the module docstring)."""
    sa_dir = os.environ.get(SERVICEACCOUNT_DIR_ENV)
    if sa_dir:
        return _from_serviceaccount_dir(Path(sa_dir), "serviceaccount-dir")
    if (STANDARD_SERVICEACCOUNT_DIR / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _from_serviceaccount_dir(STANDARD_SERVICEACCOUNT_DIR, "in-cluster")
    configuration = client.Configuration()
    config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return KubeConfig(client.ApiClient(configuration), None, "kubeconfig")


def _from_serviceaccount_dir(directory: Path, source: str) -> KubeConfig:
    configuration = client.Configuration()
    try:
        loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt")
        )
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        raise KubeError(None, f"cannot load in-cluster credentials from {directory}: {exc}") from None
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text(encoding="utf-8").strip() if namespace_file.exists() else None
    return KubeConfig(client.ApiClient(configuration), namespace or None, source)


def _error(exc: ApiException, what: str) -> KubeError:
    status = exc.status
    if status == 404:
        return KubeError(status, f"{what} not found")
    if status == 403:
        return KubeError(
            status, f"{what}: forbidden (HTTP 403); grant the runner's ServiceAccount access to it in its Role"
        )
    if status == 401:
        return KubeError(status, f"{what}: unauthorized (HTTP 401); the ServiceAccount token was refused")
    if status == 409:
        return Conflict(status, f"{what}: conflict (HTTP 409), the object changed")
    reason = exc.reason or "error"
    return KubeError(status, f"{what}: HTTP {status} {reason}")


class Kube:
    """The runner's calls to the API server; every failure is a `KubeError` with a message for a human."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            obj = cast(
                dict[str, Any], self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            )
        except ApiException as exc:
            raise _error(exc, f"{plural}.{GROUP} {namespace}/{name}") from None
        return obj

    def get_secret_value(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of `key` in Secret `namespace/name`."""
        what = f"Secret {namespace}/{name}"
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            raise _error(exc, what) from None
        data = secret.data or {}
        if key not in data:
            raise KubeError(None, f"{what} has no key {key!r}; add it or fix the secret reference's key")
        try:
            return base64.b64decode(data[key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise KubeError(None, f"{what}: key {key!r} is not UTF-8 text") from None

    def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """JSON-merge-patch `status` into the object's /status; with `resource_version` the API server refuses
        the patch (`Conflict`) when the object changed since. Returns the updated object."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            obj = cast(
                dict[str, Any],
                self._custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH
                ),
            )
        except ApiException as exc:
            raise _error(exc, f"{plural}.{GROUP} {namespace}/{name} status") from None
        return obj
