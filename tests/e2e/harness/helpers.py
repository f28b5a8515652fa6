"""Small helpers the e2e tests share."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TypeVar

import yaml
from kubernetes import client, dynamic
from kubernetes.client import ApiException

from .kubelet import LocalKubelet

T = TypeVar("T")


def wait_until(
    get: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 1.0,
    details: Callable[[], str] | None = None,
) -> T:
    """Call get() until it returns something truthy and return that; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def pod_logs(api: client.ApiClient, kubelet: LocalKubelet | None, namespace: str, name: str) -> str:
    """A pod's log: from the local kubelet's files, or from the API on a cluster with real nodes."""
    if kubelet is not None:
        return kubelet.logs(namespace, name)
    try:
        return str(client.CoreV1Api(api).read_namespaced_pod_log(name, namespace))
    except ApiException as e:
        return f"(no log: {e.reason})"


def apply_crds(api: client.ApiClient, paths: Iterable[Path], field_manager: str) -> list[str]:
    """Server-side apply every CRD in the files `paths`, wait until each is Established; their names."""
    resources = dynamic.DynamicClient(api).resources
    crds = resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    names = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                crds.server_side_apply(body=doc, name=doc["metadata"]["name"], field_manager=field_manager, force=True)
                names.append(doc["metadata"]["name"])
    ext = client.ApiextensionsV1Api(api)

    def established(name: str) -> bool:
        status = ext.read_custom_resource_definition(name).status
        return any(c.type == "Established" and c.status == "True" for c in (status and status.conditions) or [])

    for name in names:
        wait_until(partial(established, name), 60, f"CRD {name} to be Established", interval=0.2)
    resources.invalidate_cache()
    return names
