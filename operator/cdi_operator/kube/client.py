"""The blocking Kubernetes client: the runner's calls (its CdiIntegration, the Secrets it names, status patches) and
the operator's leader Lease. Every failure is a `KubeError` (kube/errors.py).

An API server that is overloaded or restarting (1,000 runs checkpointing at once, an upgrade) is asked again for up
to `retry_seconds`, with exponential backoff or its `Retry-After`: a read after a 429 or 5xx or no answer at all, a
write only after a 429 or 503, which say that the request was not processed (a write without an answer may have
been applied, and only its caller knows whether sending it again is safe). Every call has a timeout, so that a
connection that hangs is no answer rather than a run that never ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException
from urllib3.exceptions import HTTPError

from cdi_operator.api.json import JSON
from cdi_operator.api.models import GROUP, VERSION
from cdi_operator.kube.errors import UNPROCESSED_STATUSES, InvalidSecret, KubeError, Unanswered, api_error
from cdi_operator.kube.secrets import decode

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)  # seconds to connect, and to wait for the answer
FIRST_BACKOFF, MAX_BACKOFF = 0.2, 5.0  # seconds between attempts, doubling


class Kube:
    """Blocking API calls; `forbidden_hint` is added to a 403's message (what the caller's user should grant);
    `retry_seconds` how long a call is tried again while the API server is overloaded (0: not at all)."""

    def __init__(self, api_client: client.ApiClient, forbidden_hint: str | None = None, retry_seconds: float = 0.0):
        self.api_client = api_client
        self.forbidden_hint = forbidden_hint
        self.retry_seconds = retry_seconds
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._coordination: Any = client.CoordinationV1Api(api_client)  # dict bodies: serialized as JSON

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _plain(self, obj: Any) -> JSON:
        return dict(self.api_client.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    def _call(self, what: str, write: bool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`, asked again while the API server is overloaded (see the module docstring)."""
        deadline = time.monotonic() + self.retry_seconds
        backoff = FIRST_BACKOFF
        while True:
            retry_after: float | None = None
            try:
                return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
            except ApiException as exc:
                error = api_error(exc, what, self.forbidden_hint)
                retry_after = _seconds((exc.headers or {}).get("Retry-After"))
            except HTTPError as exc:  # urllib3's: refused, reset, timed out
                error = Unanswered(None, f"{what}: no answer from the API server ({type(exc).__name__})")
            retried = error.status in UNPROCESSED_STATUSES if write else error.transient
            wait = backoff if retry_after is None else min(max(retry_after, FIRST_BACKOFF), MAX_BACKOFF)
            if not retried or time.monotonic() + wait > deadline:
                raise error
            log.warning("%s; asking again in %.1f s", error.message, wait)
            time.sleep(wait)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def get_custom(self, plural: str, namespace: str, name: str) -> JSON:
        what = f"{plural}.{GROUP} {namespace}/{name}"
        get = self._custom.get_namespaced_custom_object
        return cast(JSON, self._call(what, False, get, GROUP, VERSION, namespace, plural, name))

    def get_secret_value(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of `key` in Secret `namespace/name`."""
        what = f"Secret {namespace}/{name}"
        secret = self._call(what, False, self._core.read_namespaced_secret, name, namespace)
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
        what = f"{plural}.{GROUP} {namespace}/{name} status"
        patch = self._custom.patch_namespaced_custom_object_status
        return cast(
            JSON,
            self._call(what, True, patch, GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH),
        )

    # --- coordination.k8s.io Leases ---

    def read_lease(self, namespace: str, name: str) -> JSON | None:
        """The Lease as plain JSON; None when there is none."""
        try:
            lease = self._call(
                f"Lease {namespace}/{name}", False, self._coordination.read_namespaced_lease, name, namespace
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(lease)

    def create_lease(self, namespace: str, body: JSON) -> JSON:
        what = f"Lease {namespace}/{body['metadata']['name']}"
        return self._plain(self._call(what, True, self._coordination.create_namespaced_lease, namespace, body))

    def replace_lease(self, namespace: str, name: str, body: JSON) -> JSON:
        """Replace the Lease; with `metadata.resourceVersion` in `body`, only over that version (else `Conflict`)."""
        replace = self._coordination.replace_namespaced_lease
        return self._plain(self._call(f"Lease {namespace}/{name}", True, replace, name, namespace, body))


def _seconds(value: str | None) -> float | None:
    """A Retry-After of delay-seconds (what the API server sends); None for anything else."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
