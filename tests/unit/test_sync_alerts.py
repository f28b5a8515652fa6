"""Sync alerts (controller/alerts.py): which rule of spec.notifications fires for which run, and that a run is
decided once (also across a Job's retries), as plain functions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from cdi_operator.api.models import CdiIntegration, NotificationsSpec, RunResult, RunSummary
from cdi_operator.api.reasons import Alert
from cdi_operator.controller import alerts

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RATE, SUCCESS, NO_CHANGES = Alert.ROW_ERROR_RATE, Alert.SUCCEEDED, Alert.NO_CHANGES


def run(
    result: RunResult, synced: int = 0, failed: int = 0, *, job: str | None = "users-1", minute: int = 0
) -> RunSummary:
    started = START + dt.timedelta(minutes=minute)
    return RunSummary(
        trigger="schedule",
        job=job,
        started_at=started,
        finished_at=None if result is RunResult.RUNNING else started + dt.timedelta(seconds=5),
        result=result,
        rows_read=synced + failed,
        rows_synced=synced,
        rows_failed=failed,
    )


def integration(contacts: list[str] | None = None, **notifications: Any) -> CdiIntegration:
    return CdiIntegration.model_validate(
        {
            "metadata": {"name": "users", "namespace": "data"},
            "spec": {
                "credentialRef": {"name": "wh"},
                "source": {"table": "users"},
                "dataType": "customAttributes",
                "schedule": "0 3 * * *",
                "contactEmails": ["ops@example.com"] if contacts is None else contacts,
                "notifications": notifications,
            },
        }
    )


ALL = {"rowErrorRatePercent": 10, "onSuccess": True, "onSuccessWithoutChanges": True}


@pytest.mark.parametrize(
    ("rules", "summary", "expected"),
    [
        ({}, run(RunResult.PARTIAL, 1, 99), []),  # everything off by default
        ({}, run(RunResult.SUCCESS, 0, 0), []),
        ({"rowErrorRatePercent": 10}, run(RunResult.PARTIAL, 89, 11), [RATE]),
        ({"rowErrorRatePercent": 10}, run(RunResult.PARTIAL, 90, 10), []),  # exactly 10% does not exceed 10%
        ({"rowErrorRatePercent": 0}, run(RunResult.PARTIAL, 999, 1), [RATE]),  # 0: any row error
        ({"rowErrorRatePercent": 0}, run(RunResult.SUCCESS, 5, 0), []),
        ({"rowErrorRatePercent": 10}, run(RunResult.LIMIT_EXCEEDED, 5, 5), [RATE]),  # stopped, but rows went out
        ({"rowErrorRatePercent": 10}, run(RunResult.ERROR, 0, 50), []),  # a sync-level failure: its own e-mail
        ({"rowErrorRatePercent": 10}, run(RunResult.SUCCESS, 0, 0), []),  # no rows: no rate
        ({"onSuccess": True}, run(RunResult.SUCCESS, 3), [SUCCESS]),
        ({"onSuccess": True}, run(RunResult.PARTIAL, 3, 1), [SUCCESS]),  # row errors do not make it a failure
        ({"onSuccess": True}, run(RunResult.LIMIT_EXCEEDED, 3), []),
        ({"onSuccess": True}, run(RunResult.ERROR), []),
        ({"onSuccess": True}, run(RunResult.RUNNING, 3), []),
        ({"onSuccessWithoutChanges": True}, run(RunResult.SUCCESS, 0, 0), [NO_CHANGES]),
        ({"onSuccessWithoutChanges": True}, run(RunResult.SUCCESS, 1, 0), []),
        ({"onSuccessWithoutChanges": True}, run(RunResult.PARTIAL, 0, 1), []),  # a refused row is a change
        (ALL, run(RunResult.SUCCESS, 0, 0), [SUCCESS, NO_CHANGES]),
        (ALL, run(RunResult.PARTIAL, 1, 1), [RATE, SUCCESS]),
    ],
)
def test_which_rule_fires(rules: dict[str, Any], summary: RunSummary, expected: list[Alert]) -> None:
    assert alerts.fired(NotificationsSpec.model_validate(rules), summary) == expected


def test_sync_errors_are_told_by_default_and_nothing_else() -> None:
    defaults = NotificationsSpec()
    assert defaults.on_sync_error
    assert (defaults.row_error_rate_percent, defaults.on_success, defaults.on_success_without_changes) == (
        None,
        False,
        False,
    )


def test_a_run_is_decided_once_and_a_rule_told_once_per_job() -> None:
    target = integration(**ALL)
    first = run(RunResult.PARTIAL, 1, 1)
    status: dict[str, Any] = {}
    assert alerts.due(target, first, status) == [RATE, SUCCESS]
    status["notifiedRuns"] = alerts.recorded(status, first, [RATE, SUCCESS])
    assert alerts.due(target, first, status) is None  # the same run seen again (a re-run, a restart)

    retry = run(RunResult.PARTIAL, 1, 1, minute=5)  # the Job's next pod
    assert alerts.due(target, retry, status) == []  # decided, with nothing left to tell
    status["notifiedRuns"] = alerts.recorded(status, retry, [])
    assert alerts.due(target, retry, status) is None

    next_run = run(RunResult.SUCCESS, 0, 0, job="users-2", minute=60)
    assert alerts.due(target, next_run, status) == [SUCCESS, NO_CHANGES]


def test_a_job_that_failed_then_succeeded_on_retry_is_told_its_success() -> None:
    target = integration(onSuccess=True)
    failed, retried = run(RunResult.ERROR), run(RunResult.SUCCESS, 4, minute=2)
    status = {"notifiedRuns": alerts.recorded({}, failed, alerts.fired(target.spec.notifications, failed))}
    assert alerts.due(target, retried, status) == [SUCCESS]


def test_local_runs_are_known_by_their_start() -> None:
    one, other = run(RunResult.SUCCESS, 1, job=None), run(RunResult.SUCCESS, 1, job=None, minute=1)
    assert alerts.run_key(one) != alerts.run_key(other)


def test_unfinished_runs_are_not_decided() -> None:
    assert alerts.due(integration(**ALL), run(RunResult.RUNNING, 1), {}) is None


def test_the_record_stays_short() -> None:
    status: dict[str, Any] = {}
    for minute in range(40):
        summary = run(RunResult.SUCCESS, 0, job=f"users-{minute}", minute=minute)
        status["notifiedRuns"] = alerts.recorded(status, summary, [SUCCESS, NO_CHANGES])
    assert len(status["notifiedRuns"]) == alerts.MAX_RECORDS
    assert status["notifiedRuns"][0] == alerts.attempt_key(summary)


@pytest.mark.parametrize("rule", ["rowErrorRatePercent", "onSuccess", "onSuccessWithoutChanges"])
def test_a_rule_without_contacts_is_refused_naming_the_fix(rule: str) -> None:
    with pytest.raises(ValidationError, match=f"spec.notifications.{rule} e-mails spec.contactEmails"):
        integration([], **{rule: 5 if rule == "rowErrorRatePercent" else True})
    integration([], onSyncError=True)  # today's default stays valid without contacts


@pytest.mark.parametrize("percent", [-1, 100.5])
def test_the_percentage_is_checked(percent: float) -> None:
    with pytest.raises(ValidationError, match="rowErrorRatePercent"):
        integration(rowErrorRatePercent=percent)
