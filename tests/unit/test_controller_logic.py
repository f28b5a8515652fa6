"""Plain-function tests of the operator: conditions, settings, CronJob and Job manifests, sync-now decisions,
duplicate tables, runs history, when to test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cdi_operator.api.models import CdiIntegrationSpec, SourceTable, WarehouseCredentialSpec
from cdi_operator.controller import conditions, connection, history, sync_now
from cdi_operator.controller.credential import IN_USE_FINALIZER, finalizers_with, users_of
from cdi_operator.controller.integration import (
    build_cronjob,
    credential_specs,
    cronjob_name,
    find_duplicate,
    parse_spec,
)
from cdi_operator.controller.settings import OperatorSettings, SettingsError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "credentialRef": {"name": "wh"},
    "source": {"database": "db", "schema": "s", "table": "users"},
    "dataType": "customAttributes",
    "schedule": "0 3 * * *",
}


def integration(name: str = "users", created: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cdi.ingest.dev/v1alpha1",
        "kind": "CdiIntegration",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "creationTimestamp": created},
        "spec": {**SPEC, **spec},
    }


def test_conditions_keep_transition_time_when_status_unchanged() -> None:
    first = conditions.apply(None, conditions.testing("testing", keep_ready=False), 1, T0)
    assert [c["type"] for c in first] == ["Ready", "ConnectionVerified", "Reconciling", "Stalled"]
    later = T0 + timedelta(minutes=5)
    second = conditions.apply(first, conditions.stalled("TableMissing", "no table", connection="False"), 2, later)
    by_type = {c["type"]: c for c in second}
    assert by_type["Ready"]["lastTransitionTime"] == conditions.timestamp(T0)  # False → False
    assert by_type["Stalled"]["lastTransitionTime"] == conditions.timestamp(later)  # False → True
    assert by_type["Stalled"]["reason"] == "TableMissing"
    assert all(c["observedGeneration"] == 2 for c in second)
    assert conditions.apply(second, conditions.stalled("TableMissing", "no table", connection="False"), 2) == second


def test_settings_from_env() -> None:
    settings = OperatorSettings.from_env(
        {"CDI_RUNNER_IMAGE": "img:1", "CDI_WATCH_NAMESPACES": "a, b", "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "30"}
    )
    assert settings.namespaces == ("a", "b") and not settings.clusterwide
    assert settings.connection_test_timeout == 30
    assert settings.connection_tests_at_once == 16
    wide = OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_CONNECTION_TESTS_AT_ONCE": "100"})
    assert wide.connection_tests_at_once == 100
    with pytest.raises(SettingsError, match=r"CDI_CONNECTION_TESTS_AT_ONCE '0' is not a whole number from 1 to 1024"):
        OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_CONNECTION_TESTS_AT_ONCE": "0"})
    assert settings.runner_service_account is None  # one per integration, made by the operator
    assert settings.leader_lease is None
    lease = OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_LEADER_ELECTION_LEASE": "cdi-system/cdi"})
    assert lease.leader_lease == ("cdi-system", "cdi")
    with pytest.raises(SettingsError, match=r"CDI_LEADER_ELECTION_LEASE.*NAMESPACE/NAME"):
        OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_LEADER_ELECTION_LEASE": "cdi-operator"})
    with pytest.raises(SettingsError, match="CDI_RUNNER_IMAGE"):
        OperatorSettings.from_env({})
    with pytest.raises(SettingsError, match="CDI_CONNECTION_TEST_TIMEOUT_SECONDS"):
        OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="CDI_BRAZE_DEFAULT_REST_ENDPOINT"):
        OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i", "CDI_BRAZE_DEFAULT_REST_ENDPOINT": "braze"})


def test_cronjob_manifest() -> None:
    settings = OperatorSettings(
        runner_image="img:1", braze_default_endpoint="https://rest.example.com", braze_default_secret_name="braze"
    )
    obj = integration(timeZone="Europe/Paris")
    spec = CdiIntegrationSpec.model_validate(obj["spec"])
    cronjob = build_cronjob(obj, spec, settings, suspend=True)
    assert cronjob["metadata"]["ownerReferences"][0]["uid"] == "uid-users"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert (cronjob["spec"]["schedule"], cronjob["spec"]["timeZone"], cronjob["spec"]["suspend"]) == (
        "0 3 * * *",
        "Europe/Paris",
        True,
    )
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["sync", "--in-cluster", "--integration", "ns/users", "--trigger", "schedule"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CDI_BRAZE_REST_ENDPOINT"]["value"] == "https://rest.example.com"
    assert env["CDI_BRAZE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "braze", "key": "api-key"}
    # spec.braze given: no defaults injected
    spec2 = CdiIntegrationSpec.model_validate(
        {
            **obj["spec"],
            "braze": {"restEndpoint": "https://x.example.com", "apiKeySecretRef": {"name": "k", "key": "k"}},
        }
    )
    env2 = {
        e["name"]
        for e in build_cronjob(obj, spec2, settings, suspend=False)["spec"]["jobTemplate"]["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert "CDI_BRAZE_API_KEY" not in env2 and "CDI_BRAZE_REST_ENDPOINT" not in env2
    assert len(cronjob_name("x" * 200)) <= 52


def test_sync_now_decisions_and_job() -> None:
    obj = integration()
    assert sync_now.decide(obj, "Active", []).decision is sync_now.Decision.NOTHING
    obj["metadata"]["annotations"] = {"cdi.ingest.dev/sync-now": "v1"}
    assert sync_now.decide(obj, "Active", []).decision is sync_now.Decision.CREATE
    assert sync_now.decide(obj, "Draft", []).decision is sync_now.Decision.REFUSED
    running = {"metadata": {"name": "users-123"}, "status": {"active": 1}}
    busy = sync_now.decide(obj, "Active", [running])
    assert busy.decision is sync_now.Decision.BUSY and "already running" in busy.message
    done = {"metadata": {"name": "users-1"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert sync_now.decide(obj, "Active", [done]).decision is sync_now.Decision.CREATE
    obj["status"] = {"lastSync": {"result": "Running", "startedAt": "x"}}
    assert sync_now.decide(obj, "Active", [done]).decision is sync_now.Decision.BUSY
    obj["status"] = {"lastHandledSyncNow": "v1"}
    assert sync_now.decide(obj, "Active", []).decision is sync_now.Decision.NOTHING

    assert sync_now.job_name("users", "v1") == sync_now.job_name("users", "v1")
    assert sync_now.job_name("users", "v1") != sync_now.job_name("users", "v2")
    assert len(sync_now.job_name("y" * 52, "v")) <= 63
    settings = OperatorSettings(runner_image="img:1")
    cron = build_cronjob(integration(), CdiIntegrationSpec.model_validate(SPEC), settings, suspend=False)
    cron["metadata"]["uid"] = "cron-uid"
    job = sync_now.build_job(cron, "v1")
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": "users",
        "uid": "cron-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--trigger", "syncNow"]
    assert job["metadata"]["labels"]["cdi.ingest.dev/integration"] == "users"
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "schedule"


def test_duplicate_table_detection() -> None:
    first = integration("first", "2026-01-01T00:00:00Z")
    second = integration("second", "2026-01-02T00:00:00Z", source={"database": "DB", "schema": "S", "table": "USERS"})
    other = integration("other", "2025-01-01T00:00:00Z", source={"database": "db", "schema": "s", "table": "t2"})
    everyone = [first, second, other]
    assert find_duplicate(first, everyone) is None
    assert find_duplicate(second, everyone) == "first"
    assert find_duplicate(other, everyone) is None
    elsewhere = integration("third", "2026-01-03T00:00:00Z", credentialRef={"name": "other-wh"})
    assert find_duplicate(elsewhere, [*everyone, elsewhere]) is None


def test_duplicate_table_detection_across_credentials() -> None:
    """Two credentials for one warehouse (another user, another role) still name the same table."""
    snowflake = {"account": "MyOrg-Acct", "role": "R", "warehouse": "W"}
    credentials = credential_specs(
        [
            {"metadata": {"name": "wh"}, "spec": {"type": "snowflake", "snowflake": {**snowflake, "user": "A"}}},
            {"metadata": {"name": "wh-2"}, "spec": {"type": "snowflake", "snowflake": {**snowflake, "user": "B"}}},
            {
                "metadata": {"name": "other-acct"},
                "spec": {"type": "snowflake", "snowflake": {**snowflake, "user": "A", "account": "x-y"}},
            },
            {"metadata": {"name": "broken"}, "spec": {"type": "snowflake"}},
        ]
    )
    assert set(credentials) == {"wh", "wh-2", "other-acct"}, "an invalid credential is left out"
    first = integration("first", "2026-01-01T00:00:00Z")
    twin = integration(
        "twin",
        "2026-01-02T00:00:00Z",
        credentialRef={"name": "wh-2"},
        source={"database": "DB", "schema": "S", "table": "USERS"},
    )
    elsewhere = integration("elsewhere", "2026-01-03T00:00:00Z", credentialRef={"name": "other-acct"})
    everyone = [first, twin, elsewhere]
    assert find_duplicate(twin, everyone, credentials) == "first"
    assert find_duplicate(elsewhere, everyone, credentials) is None, "another account is another table"
    assert find_duplicate(twin, everyone) is None, "without the credentials, only the credential's name counts"

    bq = {
        "type": "bigquery",
        "bigquery": {"project": "proj-a", "serviceAccountKeySecretRef": {"name": "k", "key": "k"}},
    }
    spec = WarehouseCredentialSpec.model_validate(bq)
    implicit = SourceTable.model_validate({"dataset": "ds", "table": "t"})
    explicit = SourceTable.model_validate({"project": "PROJ-A", "dataset": "ds", "table": "T"})
    assert spec.table_address(implicit) == spec.table_address(explicit) == "bigquery:///proj-a.ds.t"


def test_parse_spec_names_the_field() -> None:
    message = parse_spec(integration(schedule="* * * * *"))
    assert isinstance(message, str) and message.startswith("spec.schedule")


def test_runs_history_is_counted_once_and_the_latest_run_is_not_a_skipped_one() -> None:
    def run(run_id: str, result: str = "Success", minute: int = 0) -> dict[str, Any]:
        started = f"2026-01-01T00:{minute:02d}:00Z"
        finished = None if result == "Running" else f"2026-01-01T00:{minute:02d}:30Z"
        return {"runId": run_id, "startedAt": started, "finishedAt": finished, "result": result}

    status: dict[str, Any] = {"runs": [run("c", "Skipped", 3), run("b", "Running", 2), run("a", "Error", 1)]}
    assert [r.run_id for r in history.uncounted(status)] == ["a", "c"]  # oldest first, Running left out
    assert history.latest(status) is not None and history.latest(status).run_id == "a"  # type: ignore[union-attr]
    counted = history.counted_runs(status, history.uncounted(status))
    assert counted == ["c", "a"]
    status["countedRuns"] = counted
    assert history.uncounted(status) == []
    # b finishes after c was recorded (c was skipped while b ran): b is new, c and a stay counted.
    status["runs"][1] = run("b", "Success", 2)
    assert [r.run_id for r in history.uncounted(status)] == ["b"]
    assert history.latest(status).run_id == "b"  # type: ignore[union-attr]
    # runs that left the history leave countedRuns too
    status["runs"] = status["runs"][:1]
    assert history.counted_runs(status, []) == ["c"]


def test_test_wanted() -> None:
    obj: dict[str, Any] = {"metadata": {}, "status": {}}
    assert connection.test_wanted(obj, "fp", 600) == (True, False, None)
    obj["status"] = {"connectionTest": {"fingerprint": "fp", "result": "Passed", "time": "2026-01-01T00:00:00Z"}}
    assert connection.test_wanted(obj, "fp", 600) == (False, True, None)
    assert connection.test_wanted(obj, "other", 600)[0] is True
    obj["metadata"]["annotations"] = {"cdi.ingest.dev/test-connection": "1"}
    assert connection.test_wanted(obj, "fp", 600) == (True, True, "1")
    obj["status"]["lastHandledTestConnection"] = "1"
    assert connection.test_wanted(obj, "fp", 600) == (False, True, None)
    obj["status"]["connectionTest"]["result"] = "Failed"
    assert connection.test_wanted(obj, "fp", 600, now=T0 + timedelta(minutes=5))[0] is False
    assert connection.test_wanted(obj, "fp", 600, now=T0 + timedelta(minutes=11))[0] is True
    # A missing Secret is looked for again after a resync interval, not after the failed-test back-off.
    obj["status"]["connectionTest"]["reason"] = "SecretMissing"
    later = T0 + timedelta(minutes=2)
    assert connection.test_wanted(obj, "fp", 600, now=later, retest_missing_secret_seconds=60)[0] is True
    assert connection.test_wanted(obj, "fp", 600, now=later)[0] is False


def test_preview_values_are_short_and_json_safe() -> None:
    rows = connection.preview_rows([{"A": "x" * 500, "B": T0, "C": b"\x00\x01", "D": {"k": 1}}] * 5)
    assert len(rows) == connection.PREVIEW_ROWS
    assert len(rows[0]["A"]) == connection.PREVIEW_VALUE_CHARS
    assert rows[0]["B"] == T0.isoformat() and rows[0]["C"] == "<2 bytes>" and rows[0]["D"] == '{"k": 1}'


def test_credential_users_and_finalizer() -> None:
    a = integration("a")
    a["status"] = {"phase": "Active"}
    b = integration("b")
    b["status"] = {"phase": "Draft"}
    c = integration("c")
    c["status"] = {"phase": "Suspended"}
    assert users_of("wh", [a, b, c]) == ["a", "c"]
    assert users_of("other", [a, b, c]) == []
    cred: dict[str, Any] = {"metadata": {"finalizers": ["x"]}}
    assert finalizers_with(cred, True) == ["x", IN_USE_FINALIZER]
    cred["metadata"]["finalizers"] = ["x", IN_USE_FINALIZER]
    assert finalizers_with(cred, True) is None
    assert finalizers_with(cred, False) == ["x"]
