"""status.runs: each runner writes its own run record into the CdiIntegration's history, newest first.

The runner that did the run writes its record (Running at its start, replaced in place by the finished record;
a skipped run's record at once), so a run appears in the history even when the operator is down. The record is
merged into the list read from the object and written with that object's resourceVersion (status_store.py): a
conflict re-reads and merges again, so two runners writing at once never drop each other's records.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from cdi_operator.api.json import JSON


def new_run_id(now: datetime | None = None) -> str:
    """Unique, and ordered by start time: `20261201T214302Z-3f9a1c`."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def merged_runs(runs: Any, record: JSON, limit: int) -> list[JSON]:
    """`runs` with `record` in place of the record of the same runId, or first; at most `limit`, newest first."""
    kept = [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
    run_id = record.get("runId")
    for index, run in enumerate(kept):
        if run_id is not None and run.get("runId") == run_id:
            return [*kept[:index], record, *kept[index + 1 :]][:limit]
    return [record, *kept][:limit]
