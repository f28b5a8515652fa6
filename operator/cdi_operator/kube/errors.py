"""The Kubernetes layer's errors, as kopf has its own: nothing above `cdi_operator.kube` sees the client's exceptions.

Every message names the object and never carries the API response body (which can echo what was sent, a Secret's
data included).
"""

from __future__ import annotations

from kubernetes.client import ApiException

# What an API server that is overloaded or restarting answers (429: API Priority and Fairness refused the request
# before it was processed, which 503 also says); the same call may work a moment later.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
UNPROCESSED_STATUSES = frozenset({429, 503})


class KubeError(Exception):
    """A failed API call, with the HTTP status (None when no call was answered) and a message for a human."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """The API server is overloaded or restarting, or did not answer: the same call may work later."""
        return isinstance(self, Unanswered) or self.status in TRANSIENT_STATUSES

    @property
    def maybe_applied(self) -> bool:
        """A write that failed so may have been applied all the same: no answer, or a server error other than
        the two that say the request was not processed."""
        return self.transient and self.status not in UNPROCESSED_STATUSES


class NotFound(KubeError):
    """HTTP 404: the object (or its namespace) does not exist."""


class Forbidden(KubeError):
    """HTTP 403: RBAC does not allow the call."""


class Unauthorized(KubeError):
    """HTTP 401: the credentials were refused."""


class Conflict(KubeError):
    """HTTP 409: the object changed since the resourceVersion sent, or one of that name exists already."""


class Unanswered(KubeError):
    """No answer: the connection was refused, reset or timed out (a write may or may not have been applied)."""


class InvalidSecret(KubeError):
    """A Secret lacks the key a reference names, or its value is not UTF-8 text."""


class ConfigError(KubeError):
    """No usable client configuration (in-cluster files or a kubeconfig)."""


def api_error(exc: ApiException, what: str, forbidden_hint: str | None = None) -> KubeError:
    """The error of the class for `exc`'s status, its message naming `what` (e.g. `Secret ns/name`)."""
    status = exc.status
    if status == 404:
        return NotFound(status, f"{what} not found")
    if status == 403:
        return Forbidden(status, f"{what}: forbidden (HTTP 403)" + (f"; {forbidden_hint}" if forbidden_hint else ""))
    if status == 401:
        return Unauthorized(status, f"{what}: unauthorized (HTTP 401); the ServiceAccount token was refused")
    if status == 409:
        return Conflict(status, f"{what}: conflict (HTTP 409), the object changed")
    return KubeError(status, f"{what}: HTTP {status} {exc.reason or 'error'}")
