"""Plain-function tests of what bounds and resets a run: the deadline and its record, runner resources, the source a
watermark belongs to, and the rewind annotation's decisions."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_controller_logic import SPEC, T0

from cdi_operator.api.models import (
    CdiIntegrationSpec,
    PendingRewind,
    ResourceRequirements,
    SourceTable,
    WarehouseCredentialSpec,
    Watermark,
)
from cdi_operator.controller import deadline, rewind
from cdi_operator.controller.integration import build_cronjob
from cdi_operator.controller.resources import merged
from cdi_operator.controller.settings import OperatorSettings, SettingsError
from cdi_operator.runner.rewind import rewound_watermark
from cdi_operator.runner.termination import MESSAGE, cancel_on_sigterm

OBJ: dict[str, Any] = {"metadata": {"name": "users", "namespace": "ns", "uid": "u1"}, "spec": SPEC}


def runner_container(spec: dict[str, Any], env: dict[str, str] | None = None) -> tuple[dict[str, Any], Any]:
    settings = OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "img:1", **(env or {})})
    cronjob = build_cronjob(OBJ, CdiIntegrationSpec.model_validate(spec), settings, suspend=False)
    job_spec = cronjob["spec"]["jobTemplate"]["spec"]
    return job_spec, job_spec["template"]["spec"]["containers"][0]


# --- the deadline ---------------------------------------------------------------------------------------------------


def test_timeout_seconds_is_the_jobs_deadline_with_a_default_of_an_hour() -> None:
    job_spec, _ = runner_container(SPEC)
    assert job_spec["activeDeadlineSeconds"] == 3600
    job_spec, _ = runner_container({**SPEC, "sync": {"timeoutSeconds": 120}})
    assert job_spec["activeDeadlineSeconds"] == 120
    for wrong in (5, 7200):
        with pytest.raises(ValueError, match="timeoutSeconds"):
            CdiIntegrationSpec.model_validate({**SPEC, "sync": {"timeoutSeconds": wrong}})


def job(name: str, *, started: datetime, stopped: datetime | None, trigger: str | None = None) -> dict[str, Any]:
    conditions = []
    if stopped is not None:
        conditions = [
            {"type": t, "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": stopped.isoformat()}
            for t in ("FailureTarget", "Failed")
        ]
    labels = {"cdi.ingest.dev/trigger": trigger} if trigger else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"activeDeadlineSeconds": 60},
        "status": {"startTime": started.isoformat(), "conditions": conditions},
    }


def test_a_run_left_running_by_the_deadline_becomes_an_error_with_its_reason() -> None:
    running = {"job": "j1", "trigger": "schedule", "startedAt": "2026-01-01T00:00:05Z", "result": "Running"}
    record = deadline.stopped_run([job("j1", started=T0, stopped=T0 + timedelta(minutes=1))], running)
    assert record is not None
    assert record["result"] == "Error" and record["job"] == "j1" and record["startedAt"] == running["startedAt"]
    assert record["message"].startswith("DeadlineExceeded: ") and "timeoutSeconds=60" in record["message"]
    assert record["finishedAt"] == (T0 + timedelta(minutes=1)).isoformat()
    assert deadline.stopped_run([job("j1", started=T0, stopped=T0 + timedelta(minutes=1))], record) is None


def test_a_run_the_runner_ended_on_sigterm_gets_the_deadline_as_its_reason() -> None:
    terminated = {"job": "j1", "startedAt": "2026-01-01T00:00:05Z", "finishedAt": "2026-01-01T00:01:01Z"}
    terminated |= {"result": "Error", "message": MESSAGE}
    stopped = job("j1", started=T0, stopped=T0 + timedelta(minutes=1))
    assert deadline.should_check(terminated, None)
    record = deadline.stopped_run([stopped], terminated)
    assert record is not None and record["message"].startswith("DeadlineExceeded: ")
    assert record["finishedAt"] == terminated["finishedAt"]
    other_error = {**terminated, "message": "PermissionDenied: no SELECT on the table"}
    assert deadline.stopped_run([stopped], other_error) is None
    assert not deadline.should_check(other_error, None)


def test_sigterm_cancels_the_run_and_says_so() -> None:
    async def run() -> bool:
        with cancel_on_sigterm() as stop:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return stop.requested
        return False

    assert asyncio.run(run()) is True
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the default again afterwards


def test_a_runner_stopped_before_it_wrote_anything_gets_a_record_from_its_job() -> None:
    earlier = {"job": "j0", "startedAt": "2025-12-31T00:00:00Z", "finishedAt": "2025-12-31T00:01:00Z"}
    stopped = job("j1-now-abc", started=T0, stopped=T0 + timedelta(minutes=1), trigger="syncNow")
    record = deadline.stopped_run([stopped], {**earlier, "result": "Success"})
    assert record is not None
    assert (record["job"], record["trigger"], record["result"]) == ("j1-now-abc", "syncNow", "Error")
    assert record["startedAt"] == "2026-01-01T00:00:00Z"
    later = {"job": "j2", "startedAt": "2026-01-01T01:00:00Z", "result": "Success"}
    assert deadline.stopped_run([stopped], later) is None  # a later run has recorded itself
    assert deadline.stopped_run([job("j3", started=T0, stopped=None)], {**earlier, "result": "Running"}) is None


def test_jobs_are_listed_only_when_a_run_may_be_unrecorded() -> None:
    assert deadline.should_check({"result": "Running"}, None)
    done = {"result": "Success", "startedAt": "2026-01-01T00:00:10Z"}
    assert not deadline.should_check(done, {"status": {"lastScheduleTime": "2026-01-01T00:00:00Z"}})
    assert deadline.should_check(done, {"status": {"lastScheduleTime": "2026-01-02T00:00:00Z"}})
    assert not deadline.should_check(None, {"status": {}})


# --- runner resources -----------------------------------------------------------------------------------------------


def test_runner_resources_from_the_chart_overridden_per_key_by_the_integration() -> None:
    default = '{"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}'
    _, container = runner_container(SPEC, {"CDI_RUNNER_RESOURCES": default})
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    own = {**SPEC, "runner": {"resources": {"limits": {"memory": "4Gi", "cpu": "2"}}}}
    _, container = runner_container(own, {"CDI_RUNNER_RESOURCES": default})
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "4Gi", "cpu": "2"},
    }
    _, container = runner_container(SPEC)
    assert "resources" not in container
    assert merged(None, ResourceRequirements.model_validate({"requests": {"ephemeral-storage": "1Gi"}})) == {
        "requests": {"ephemeral-storage": "1Gi"}
    }


@pytest.mark.parametrize(
    ("raw", "names"),
    [("{", "not JSON"), ('{"limits": {"memory": "lots"}}', "limits.memory"), ('{"limit": {}}', "limit")],
)
def test_bad_runner_resources_name_the_variable(raw: str, names: str) -> None:
    with pytest.raises(SettingsError, match=rf"CDI_RUNNER_RESOURCES.*{names}"):
        OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_RUNNER_RESOURCES": raw})


def test_a_bad_quantity_in_the_spec_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"runner\.resources\.limits\.memory"):
        CdiIntegrationSpec.model_validate({**SPEC, "runner": {"resources": {"limits": {"memory": "1 GB"}}}})


# --- the source a watermark belongs to ------------------------------------------------------------------------------


def credential(type_: str, **block: Any) -> WarehouseCredentialSpec:
    secret = {"name": "s", "key": "k"}
    defaults: dict[str, dict[str, Any]] = {
        "redshift": {"host": "c.example.com", "database": "dev", "user": "u", "passwordSecretRef": secret},
        "snowflake": {"account": "org-acct", "user": "u", "role": "r", "warehouse": "w"},
        "bigquery": {"project": "my-project", "serviceAccountKeySecretRef": secret},
        "databricks": {"serverHostname": "x.databricks.com", "httpPath": "/sql/1", "accessTokenSecretRef": secret},
    }
    return WarehouseCredentialSpec.model_validate({"type": type_, type_: {**defaults[type_], **block}})


def table(**parts: str) -> SourceTable:
    return SourceTable.model_validate(parts)


def test_a_watermarks_source_is_the_table_not_the_login() -> None:
    users = table(database="DEV", schema="Public", table="Users")
    assert credential("redshift").table_address(users) == "redshift://c.example.com:5439/dev.public.users"
    redshift = credential("redshift").table_address(users)
    rotated = credential("redshift", user="other", passwordSecretRef={"name": "new", "key": "p"}, ssl=False)
    assert rotated.table_address(users) == redshift
    assert credential("redshift", host="d.example.com").table_address(users) != redshift
    snowflake = credential("snowflake").table_address(users)
    assert snowflake == credential("snowflake", user="v", role="q", warehouse="big").table_address(users)
    assert snowflake != credential("snowflake", account="org-other").table_address(users)
    bq = table(dataset="crm", table="users")
    assert credential("bigquery").table_address(bq) == "bigquery:///my-project.crm.users"
    assert credential("bigquery", location="EU").table_address(bq) == credential("bigquery").table_address(bq)
    assert credential("bigquery").table_address(table(project="other", dataset="crm", table="users")) != (
        credential("bigquery").table_address(bq)
    )
    db = table(schema="crm", table="users")
    assert credential("databricks", catalog="main").table_address(db) == (
        "databricks://x.databricks.com/main.crm.users"
    )
    assert credential("databricks", catalog="main", httpPath="/sql/2").table_address(db) == (
        credential("databricks", catalog="main").table_address(table(catalog="main", schema="crm", table="users"))
    )


# --- rewind ---------------------------------------------------------------------------------------------------------


def annotated(value: str | None, **status: Any) -> dict[str, Any]:
    annotations = {} if value is None else {"cdi.ingest.dev/rewind": value}
    return {"metadata": {"name": "users", "annotations": annotations}, "status": status}


WATERMARK = {"updatedAt": "2026-01-01T12:00:00Z"}


def test_rewind_decisions() -> None:
    assert rewind.decide(annotated(None), []).decision is rewind.Decision.NOTHING
    handled = annotated("full", lastHandledRewind="full", watermark=WATERMARK)
    assert rewind.decide(handled, []).decision is rewind.Decision.NOTHING  # once per value

    full = rewind.decide(annotated("full", watermark=WATERMARK), [])
    assert (full.decision, full.to, full.pending) == (rewind.Decision.ACCEPT, None, {"value": "full", "to": None})

    to = rewind.decide(annotated("2026-01-01T10:00:00+02:00", watermark=WATERMARK), [])
    assert to.decision is rewind.Decision.ACCEPT and to.to == datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert PendingRewind.model_validate(to.pending).to == to.to

    for value, why in [
        ("yesterday", "RFC 3339"),
        ("2026-01-01T10:00:00", "RFC 3339"),  # no zone
        ("2026-01-01T13:00:00Z", "never skips rows"),
    ]:
        refused = rewind.decide(annotated(value, watermark=WATERMARK), [])
        assert refused.decision is rewind.Decision.REFUSE and why in refused.message, (value, refused)
    assert "no watermark" in rewind.decide(annotated("2026-01-01T10:00:00Z"), []).message

    running_job = {"metadata": {"name": "users-now-1"}, "status": {}}
    busy = rewind.decide(annotated("full", watermark=WATERMARK), [running_job])
    assert busy.decision is rewind.Decision.REFUSE and "users-now-1" in busy.message
    running = annotated("full", watermark=WATERMARK, lastSync={"result": "Running", "startedAt": "x"})
    assert rewind.decide(running, []).decision is rewind.Decision.REFUSE


def test_rewound_watermark_resends_exactly_the_rows_after_the_time() -> None:
    mark = rewound_watermark(PendingRewind(value="v", to=T0), "redshift://a:5439/db.s.t")
    assert mark == Watermark(updated_at=T0, boundary_complete=True, source="redshift://a:5439/db.s.t")
    assert rewound_watermark(PendingRewind(value="full"), None) is None
