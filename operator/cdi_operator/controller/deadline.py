"""Runs stopped by `spec.sync.timeoutSeconds` (the Job's `activeDeadlineSeconds`), recorded by the operator.

At the deadline the Job controller marks the Job failed (`FailureTarget`, then `Failed`, reason
`DeadlineExceeded`) and deletes its pod, whose runner is stopped mid-run: it cannot say why, and it may be stopped
before it wrote anything. So the operator writes the record from the Job: a `lastSync` of that Job still `Running`
or ended by SIGTERM (`Terminated:`, runner/termination.py), or, when the runner never wrote one, a new record from
the Job's start, becomes `Error` with a message starting `DeadlineExceeded:`. That is the reason the `Synced`
condition, the Warning Event and the one failure e-mail use (observability.py). The watermark is the runner's last
checkpoint, so the next run continues from there.

The Jobs are listed only while there is something to find: such a `lastSync`, or a scheduled run
(`CronJob.status.lastScheduleTime`) that has not recorded a start yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cdi_operator.api import reasons
from cdi_operator.api.json import JSON
from cdi_operator.api.models import RunResult, RunSummary
from cdi_operator.controller.sync_now import TRIGGER_LABEL
from cdi_operator.runner.run_record import merged_runs

_TERMINAL = ("FailureTarget", "Failed")


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def unfinished(last_sync: JSON) -> bool:
    """Still `Running`, or ended by SIGTERM (runner/termination.py) for a reason the runner cannot know."""
    result, text = last_sync.get("result"), str(last_sync.get("message") or "")
    return result == RunResult.RUNNING.value or (
        result == RunResult.ERROR.value and text.startswith(f"{reasons.TERMINATED}: ")
    )


def should_check(last_sync: JSON | None, cronjob: JSON | None) -> bool:
    if isinstance(last_sync, dict) and unfinished(last_sync):
        return True
    scheduled = _time(((cronjob or {}).get("status") or {}).get("lastScheduleTime"))
    started = _time((last_sync or {}).get("startedAt"))
    return scheduled is not None and (started is None or started < scheduled)


def deadline_time(job: JSON) -> datetime | None:
    """When the Job was stopped by its activeDeadlineSeconds, or None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") in _TERMINAL
            and condition.get("status") == "True"
            and condition.get("reason") == reasons.DEADLINE_EXCEEDED
        ):
            return _time(condition.get("lastTransitionTime"))
    return None


def message(job: JSON) -> str:
    seconds = (job.get("spec") or {}).get("activeDeadlineSeconds")
    return (
        f"{reasons.DEADLINE_EXCEEDED}: the run was stopped after spec.sync.timeoutSeconds={seconds} (the Job's "
        "activeDeadlineSeconds); the next run continues from the watermark it had saved"
    )


def stopped_run(jobs: list[JSON], last_sync: JSON | None) -> JSON | None:
    """The status.lastSync that records a run the deadline stopped, or None when status already tells it."""
    stopped = [(at, job) for job in jobs if (at := deadline_time(job)) is not None]
    for at, job in sorted(stopped, key=lambda pair: pair[0], reverse=True):
        name = job["metadata"]["name"]
        if isinstance(last_sync, dict) and last_sync.get("job") == name:
            if not unfinished(last_sync):
                return None
            return {
                **last_sync,
                "result": RunResult.ERROR.value,
                "finishedAt": last_sync.get("finishedAt") or at.isoformat(),
                "message": message(job),
            }
        job_started = _time((job.get("status") or {}).get("startTime")) or at
        last_started = _time((last_sync or {}).get("startedAt"))
        if last_started is not None and last_started >= job_started:
            return None  # a later run has recorded itself
        trigger = ((job.get("metadata") or {}).get("labels") or {}).get(TRIGGER_LABEL) or "schedule"
        summary = RunSummary(
            trigger="syncNow" if trigger == "syncNow" else "schedule",
            job=name,
            started_at=job_started,
            finished_at=at,
            result=RunResult.ERROR,
            message=message(job) + " (the runner recorded nothing before it was stopped)",
        )
        return summary.model_dump(mode="json", by_alias=True)
    return None


def status_patch(jobs: list[JSON], status: JSON, run_history: int) -> JSON | None:
    """What the operator writes for a run the deadline stopped, built from `status` (as read at one
    resourceVersion: StatusWriter.guarded): the record in lastSync, and in status.runs in place of the record the
    stopped runner left (the same runId), or first. None when status already tells it."""
    record = stopped_run(jobs, status.get("lastSync"))
    if record is None:
        return None
    return {"lastSync": record, "runs": merged_runs(status.get("runs"), record, run_history)}
