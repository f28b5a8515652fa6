"""kstatus-compatible conditions, as plain JSON dicts the way they sit in status.

`lastTransitionTime` changes only when a condition's status changes; `observedGeneration` is the generation the
condition describes. Ready and ConnectionVerified are "normal-true" conditions; Reconciling and Stalled are the
"abnormal-true" ones kstatus reads (Reconciling=True: in progress; Stalled=True: needs a human).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cdi_operator.api import reasons
from cdi_operator.api.reasons import CONNECTION_VERIFIED, READY, RECONCILING, STALLED

ORDER = (READY, CONNECTION_VERIFIED, RECONCILING, STALLED)

Status = Literal["True", "False", "Unknown"]
MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Want:
    """The desired state of one condition."""

    type: str
    status: Status
    reason: str
    message: str = ""


def timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shorten(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def apply(
    current: Sequence[dict[str, Any]] | None,
    wanted: Sequence[Want],
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The whole conditions list with `wanted` set: lastTransitionTime kept when the status is unchanged.

    Conditions not in `wanted` are kept as they are. The result is ordered Ready, ConnectionVerified, Reconciling,
    Stalled, then any others, so that an unchanged list compares equal.
    """
    by_type = {c["type"]: dict(c) for c in current or [] if isinstance(c, dict) and "type" in c}
    for want in wanted:
        old = by_type.get(want.type)
        changed = old is None or old.get("status") != want.status
        by_type[want.type] = {
            "type": want.type,
            "status": want.status,
            "reason": want.reason,
            "message": shorten(want.message),
            "lastTransitionTime": timestamp(now) if changed else old["lastTransitionTime"],  # type: ignore[index]
            **({"observedGeneration": generation} if generation is not None else {}),
        }
    ordered = [by_type.pop(t) for t in ORDER if t in by_type]
    return ordered + [by_type[t] for t in sorted(by_type)]


def find(conditions: Sequence[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if isinstance(c, dict) and c.get("type") == type_), None)


def ready(reason: str, message: str = "") -> list[Want]:
    """Everything is as asked: Ready and ConnectionVerified True, nothing in progress or stalled."""
    return [
        Want(READY, "True", reason, message),
        Want(CONNECTION_VERIFIED, "True", reasons.TEST_PASSED, "the connection test passed"),
        Want(RECONCILING, "False", reason),
        Want(STALLED, "False", reason),
    ]


def testing(message: str, *, keep_ready: bool) -> list[Want]:
    """A connection test is running: Reconciling=True. `keep_ready` when re-testing an integration that is live."""
    wants = [
        Want(CONNECTION_VERIFIED, "Unknown", reasons.TESTING, message),
        Want(RECONCILING, "True", reasons.TESTING, message),
        Want(STALLED, "False", reasons.TESTING),
    ]
    if not keep_ready:
        wants.insert(0, Want(READY, "False", reasons.TESTING, message))
    return wants


def stalled(reason: str, message: str, *, connection: Status | None = None) -> list[Want]:
    """A human must act: Ready=False and Stalled=True with the reason; ConnectionVerified when known."""
    wants = [
        Want(READY, "False", reason, message),
        Want(RECONCILING, "False", reason),
        Want(STALLED, "True", reason, message),
    ]
    if connection is not None:
        wants.insert(1, Want(CONNECTION_VERIFIED, connection, reason, message))
    return wants
