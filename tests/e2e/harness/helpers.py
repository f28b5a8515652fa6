"""Small helpers the e2e tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client
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
