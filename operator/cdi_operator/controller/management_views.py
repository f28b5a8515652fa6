"""Braze's CDI management API, the pure part: its JSON shapes from CdiIntegrations and their runs, and the opaque
cursors of its `Link` paging (BRAZE-API.md, "Braze's own CDI management API"). The server is management_api.py."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from cdi_operator.api.json import JSON
from cdi_operator.api.models import Phase, RunResult
from cdi_operator.api.schedule import ScheduleError, next_run

PAGE_SIZE = 10
KIND_INTEGRATIONS, KIND_RUNS = "integrations", "runs"

# Braze's integration statuses; a Suspended integration is what Braze calls paused.
INTEGRATION_STATUS = {
    Phase.ACTIVE.value: "active",
    Phase.SUSPENDED.value: "paused",
    Phase.DRAFT.value: "draft",
    Phase.FAILED.value: "error",
}
# The lower-case job statuses real callers compare; a run stopped by spec.sync.maxRowsPerRun counts as failed, as
# the chart's alerts count it, since Braze's API knows no such status.
JOB_STATUS = {
    RunResult.RUNNING.value: "running",
    RunResult.SUCCESS.value: "success",
    RunResult.PARTIAL.value: "partial",
    RunResult.ERROR.value: "error",
    RunResult.LIMIT_EXCEEDED.value: "error",
}
_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

T = TypeVar("T")
Key = tuple[str, ...]


class InvalidCursor(ValueError):
    """A `cursor` this API did not hand out for this list."""


def valid_integration_id(value: str) -> bool:
    """An integration id is a Kubernetes uid (a lower-case UUID)."""
    return bool(_UID.match(value))


def wire_time(value: object) -> str | None:
    """An RFC 3339 time as Braze writes it: UTC, always six fractional digits and `Z` (callers compare it with
    their own clock, so whole seconds would put a run before its trigger)."""
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- paging ----------------------------------------------------------------------------------------------------------


def encode_cursor(kind: str, scope: str, direction: Literal["after", "before"], key: Key) -> str:
    raw = json.dumps({"k": kind, "s": scope, "d": direction, "p": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, scope: str) -> tuple[Literal["after", "before"], Key]:
    """The direction and key of a cursor of list `kind` in `scope` (an integration's runs: its id)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidCursor(cursor) from None
    if not isinstance(data, dict) or data.get("k") != kind or data.get("s") != scope:
        raise InvalidCursor(cursor)
    direction, key = data.get("d"), data.get("p")
    if direction not in ("after", "before") or not isinstance(key, list) or not all(isinstance(p, str) for p in key):
        raise InvalidCursor(cursor)
    return direction, tuple(key)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    prev: str | None  # the cursor of the page before, when there is one
    next: str | None


def page(
    items: Sequence[T], key: Callable[[T], Key], cursor: str | None, kind: str, scope: str = "", *, newest_first: bool
) -> Page[T]:
    """Up to PAGE_SIZE of `items` (in the order shown: by `key`, descending when `newest_first`) at `cursor`.

    A cursor holds the key of the item next to its page, not an offset, so a page stays where it was when items are
    added or removed meanwhile (a new run appears on the first page, not as a repeat on the next)."""

    def shown_after(item: T, mark: Key) -> bool:
        return key(item) < mark if newest_first else key(item) > mark

    start = 0
    end = min(PAGE_SIZE, len(items))
    if cursor is not None:
        direction, mark = decode_cursor(cursor, kind, scope)
        if direction == "after":
            start = next((i for i, item in enumerate(items) if shown_after(item, mark)), len(items))
            end = min(start + PAGE_SIZE, len(items))
        else:
            end = next((i for i, item in enumerate(items) if key(item) == mark or shown_after(item, mark)), len(items))
            start = max(0, end - PAGE_SIZE)
    window = list(items[start:end])
    prev = encode_cursor(kind, scope, "before", key(window[0])) if window and start > 0 else None
    following = encode_cursor(kind, scope, "after", key(window[-1])) if window and end < len(items) else None
    return Page(window, prev, following)


def link_header(path: str, result: Page[Any]) -> str | None:
    """Braze's `Link` header (relative URLs), or None when the list fits one page."""
    links = [f'<{path}?cursor={c}>; rel="{rel}"' for rel, c in (("prev", result.prev), ("next", result.next)) if c]
    return ",".join(links) or None


# --- shapes ----------------------------------------------------------------------------------------------------------


def runs_newest_first(status: JSON) -> list[JSON]:
    """The integration's runs as Braze lists syncs, the one in progress included: the records of status.runs, and
    status.lastSync when it is not among them. A Skipped record is left out: it read and sent nothing because
    another run held the integration, and Braze, which refuses a second job instead, never shows such a sync."""
    runs = [r for r in status.get("runs") or [] if isinstance(r, dict) and r.get("startedAt")]
    last = status.get("lastSync")
    if isinstance(last, dict) and last.get("startedAt") and not any(_same_run(r, last) for r in runs):
        runs.append(last)
    return sorted((r for r in runs if r.get("result") != RunResult.SKIPPED.value), key=run_key, reverse=True)


def _same_run(a: JSON, b: JSON) -> bool:
    if a.get("runId") and b.get("runId"):
        return bool(a["runId"] == b["runId"])
    return (a.get("startedAt"), a.get("job"), a.get("trigger")) == (b.get("startedAt"), b.get("job"), b.get("trigger"))


def run_key(run: JSON) -> Key:
    """Runs sort by start; the run id (or Job) breaks ties."""
    return (wire_time(run.get("startedAt")) or "", str(run.get("runId") or run.get("job") or ""))


def job_status(run: JSON) -> str:
    result = str(run.get("result") or "")
    return JOB_STATUS.get(result, result.lower())


def job_result(run: JSON) -> JSON:
    """One entry of job_sync_status."""
    return {
        "job_status": job_status(run),
        "sync_start_time": wire_time(run.get("startedAt")),
        "sync_finish_time": wire_time(run.get("finishedAt")),
        "last_timestamp_synced": wire_time(run.get("watermark")),
        "rows_synced": int(run.get("rowsSynced") or 0),
        "rows_failed_with_errors": int(run.get("rowsFailed") or 0),
    }


def integration_key(obj: JSON) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def integration_result(obj: JSON, warehouse_type: str | None, now: datetime) -> JSON:
    """One entry of GET /cdi/integrations. `app_group_id` is the namespace: what a Braze workspace is to its
    integrations, a namespace is to CdiIntegrations."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    phase = str(status.get("phase") or Phase.DRAFT.value)
    runs = runs_newest_first(status)
    latest = runs[0] if runs else None
    return {
        "integration_id": meta.get("uid"),
        "app_group_id": meta.get("namespace"),
        "integration_name": meta.get("name"),
        "integration_type": spec.get("dataType"),
        "integration_status": INTEGRATION_STATUS.get(phase, phase.lower()),
        "contact_emails": ",".join(spec.get("contactEmails") or []),
        "last_updated_at": wire_time((status.get("watermark") or {}).get("updatedAt")),
        "warehouse_type": warehouse_type,
        "last_job_start_time": wire_time(latest.get("startedAt")) if latest else None,
        "last_job_status": job_status(latest) if latest else None,
        "next_scheduled_run": next_scheduled_run(spec, phase, now),
    }


def next_scheduled_run(spec: JSON, phase: str, now: datetime) -> str | None:
    """When the CronJob next fires; None unless the integration is Active (a paused or draft one is not run)."""
    if phase != Phase.ACTIVE.value or not isinstance(spec.get("schedule"), str):
        return None
    try:
        return wire_time(next_run(spec["schedule"], str(spec.get("timeZone") or "UTC"), now))
    except (ScheduleError, ValueError, LookupError):
        return None
