"""status.runs: the operator prepends each finished status.lastSync (written by the runner) to a short history."""

from __future__ import annotations

from typing import Any

MAX_RUNS = 10


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a.get("startedAt") == b.get("startedAt")
        and a.get("job") == b.get("job")
        and a.get("trigger") == b.get("trigger")
    )


def runs_with_last_sync(status: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The new status.runs when status.lastSync is a finished run not yet recorded (or recorded before it finished
    updating); None when runs is already right."""
    status = status or {}
    last = status.get("lastSync")
    if not isinstance(last, dict) or not last.get("finishedAt") or last.get("result") == "Running":
        return None
    runs = [r for r in status.get("runs") or [] if isinstance(r, dict)]
    for index, run in enumerate(runs):
        if _same_run(run, last):
            if run == last:
                return None
            return [*runs[:index], dict(last), *runs[index + 1 :]]
    return [dict(last), *runs][:MAX_RUNS]
