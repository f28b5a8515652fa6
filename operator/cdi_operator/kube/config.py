"""The Kubernetes client configuration, the same for the operator and the runner.

First match wins:

1. `$CDI_SERVICEACCOUNT_DIR` (a directory with `token`, `ca.crt`, `namespace`) with `$KUBERNETES_SERVICE_HOST` /
   `$KUBERNETES_SERVICE_PORT`: a pod whose ServiceAccount files are not at the standard path (the e2e local kubelet).
2. The standard in-cluster path `/var/run/secrets/kubernetes.io/serviceaccount`.
3. A kubeconfig (`$KUBECONFIG`, else `~/.kube/config`), for local use.

The token file is re-read every minute (bound tokens are rotated by the kubelet), by the kubernetes client's
in-cluster loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.incluster_config import InClusterConfigLoader

from cdi_operator.kube.errors import ConfigError

SERVICEACCOUNT_DIR_ENV = "CDI_SERVICEACCOUNT_DIR"
STANDARD_SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
        raise ConfigError(None, f"cannot load in-cluster credentials from {directory}: {exc}") from None
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text(encoding="utf-8").strip() if namespace_file.exists() else None
    return KubeConfig(client.ApiClient(configuration), namespace or None, source)
