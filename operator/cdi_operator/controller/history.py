"""status.runs, written by the runners: which runs the operator has not accounted for yet, and the latest one.

Each runner writes its own record into status.runs (runner/run_record.py), also while the operator is down. The
operator counts every finished record once in its metrics and tells about it (Event, e-mail), then adds its
runId to `status.countedRuns`; a record whose runId is there was accounted for by this or an earlier operator
process, so a restart neither forgets a run that finished while it was down nor counts one twice.
"""

from __future__ import annotations

from pydantic import ValidationError

from cdi_operator.api.json import JSON
from cdi_operator.api.models import RunResult, RunSummary


def run_key(summary: RunSummary) -> str:
    """A run's id; records written before runs had ids are known by their start."""
    return summary.run_id or summary.started_at.isoformat()


def finished_runs(status: JSON) -> list[RunSummary]:
    """The finished records of status.runs, newest first (records that do not parse are left out)."""
    runs: list[RunSummary] = []
    for raw in status.get("runs") or []:
        try:
            summary = RunSummary.model_validate(raw)
        except ValidationError:
            continue
        if summary.result is not RunResult.RUNNING and summary.finished_at is not None:
            runs.append(summary)
    return runs


def uncounted(status: JSON) -> list[RunSummary]:
    """The finished runs not in status.countedRuns, oldest first."""
    counted = set(status.get("countedRuns") or [])
    return [s for s in reversed(finished_runs(status)) if run_key(s) not in counted]


def counted_runs(status: JSON, counted_now: list[RunSummary]) -> list[str]:
    """The new status.countedRuns: the keys of the runs of status.runs counted before or now (runs that left the
    history are dropped, so the list stays as short as the history)."""
    counted = set(status.get("countedRuns") or []) | {run_key(s) for s in counted_now}
    return [run_key(s) for s in finished_runs(status) if run_key(s) in counted]


def latest(status: JSON) -> RunSummary | None:
    """The newest finished run that was not skipped (the one the Synced condition tells about)."""
    for summary in finished_runs(status):
        if summary.result is not RunResult.SKIPPED:
            return summary
    return None
