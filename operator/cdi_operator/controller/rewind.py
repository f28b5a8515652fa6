"""The `cdi.ingest.dev/rewind` annotation: an RFC 3339 time or `full`, handled once per value.

The operator only decides; the next run applies (runner/rewind.py). A new value is

- refused with a Warning Event while a run is in progress (the sync-now rule, `sync_now.sync_running`), when it is
  neither `full` nor an RFC 3339 time with a zone, or when the time is not before the watermark (a rewind never
  skips rows; with no watermark yet the next run sends every row anyway);
- otherwise accepted: `status.pendingRewind` holds it until a run applies it, with a Normal Event.

Either way the value goes into `status.lastHandledRewind`, so annotating the same value again does nothing.
A run that started just before the rewind was accepted (the operator saw no Job yet) read its watermark already and
finishes as it began; the rewind then waits for the run after it, which is always the one that says `rewoundTo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from cdi_operator.api.json import JSON
from cdi_operator.api.models import REWIND_ANNOTATION, REWIND_FULL
from cdi_operator.controller.sync_now import sync_running


class Decision(StrEnum):
    NOTHING = "Nothing"
    ACCEPT = "Accept"
    REFUSE = "Refuse"


@dataclass(frozen=True)
class Rewind:
    decision: Decision
    value: str | None = None
    to: datetime | None = None  # None with ACCEPT: full
    message: str = ""

    @property
    def pending(self) -> JSON:
        """status.pendingRewind of an accepted rewind."""
        return {"value": self.value, "to": None if self.to is None else self.to.isoformat()}


def requested_value(obj: JSON) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REWIND_ANNOTATION)
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return None if value == (obj.get("status") or {}).get("lastHandledRewind") else value


def parse_time(value: str) -> datetime | None:
    """An RFC 3339 time with a zone (`2026-05-01T00:00:00Z`, `…+02:00`) in UTC, else None."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def decide(obj: JSON, jobs: list[JSON]) -> Rewind:
    value = requested_value(obj)
    if value is None:
        return Rewind(Decision.NOTHING)
    status = obj.get("status") or {}
    running = sync_running(jobs, status.get("lastSync"))
    if running:
        return Rewind(
            Decision.REFUSE,
            value,
            message=f"rewind {value!r} refused: a sync is running ({running}); annotate again when it finishes",
        )
    if value == REWIND_FULL:
        return Rewind(Decision.ACCEPT, value, message=f"rewind {value!r}: the next run re-sends every row")
    to = parse_time(value)
    if to is None:
        return Rewind(
            Decision.REFUSE,
            value,
            message=f"rewind {value!r} refused: write an RFC 3339 time with its zone (e.g. 2026-05-01T00:00:00Z) "
            f"or {REWIND_FULL!r}",
        )
    watermark = parse_time(str((status.get("watermark") or {}).get("updatedAt") or ""))
    if watermark is None or to >= watermark:
        where = "there is no watermark yet" if watermark is None else f"the watermark is {watermark.isoformat()}"
        return Rewind(
            Decision.REFUSE,
            value,
            message=f"rewind {value!r} refused: {where}, and a rewind never skips rows; the next run already sends "
            "every row after it",
        )
    return Rewind(
        Decision.ACCEPT, value, to, message=f"rewind {value!r}: the next run re-sends the rows after {to.isoformat()}"
    )
