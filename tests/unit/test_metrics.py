"""The Prometheus metrics: DESIGN.md's names and labels, each finished run counted once, restart-safe."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

import cdi_operator.controller.metrics as metrics_module
from cdi_operator.api.models import RunResult, RunSummary
from cdi_operator.controller.metrics import Metrics, start_metrics_server

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def summary(minutes: float = 1, result: RunResult = RunResult.SUCCESS, **fields: object) -> RunSummary:
    started = START + timedelta(minutes=minutes)
    values: dict[str, object] = {
        "trigger": "schedule",
        "startedAt": started,
        "finishedAt": started + timedelta(seconds=42),
        "result": result,
        "rowsRead": 12,
        "rowsSynced": 10,
        "rowsFailed": 2,
        "watermark": started - timedelta(hours=1),
        "brazeRequests": {"/users/track:201": 3, "/users/track:429": 1},
    }
    values.update(fields)
    return RunSummary.model_validate(values)


def fresh() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry, counting_since=START), registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_finished_run_is_counted_with_the_contract_names_and_labels() -> None:
    metrics, registry = fresh()
    run = summary()

    assert metrics.observe_run("team-a", "users", "customAttributes", run)

    labels = {"namespace": "team-a", "integration": "users", "data_type": "customAttributes"}
    assert value(registry, "cdi_sync_runs_total", **labels, trigger="schedule", result="Success") == 1
    assert value(registry, "cdi_sync_rows_total", **labels, result="synced") == 10
    assert value(registry, "cdi_sync_rows_total", **labels, result="failed") == 2
    assert value(registry, "cdi_sync_duration_seconds_count", **labels) == 1
    assert value(registry, "cdi_sync_duration_seconds_sum", **labels) == 42
    assert run.watermark is not None and run.finished_at is not None
    key = {"namespace": "team-a", "integration": "users"}
    assert value(registry, "cdi_sync_watermark_timestamp_seconds", **key) == run.watermark.timestamp()
    assert value(registry, "cdi_sync_last_success_timestamp_seconds", **key) == run.finished_at.timestamp()
    assert value(registry, "cdi_braze_requests_total", endpoint="/users/track", code="201") == 3
    assert value(registry, "cdi_braze_requests_total", endpoint="/users/track", code="429") == 1


def test_the_same_run_seen_again_is_not_counted_again() -> None:
    metrics, registry = fresh()
    run = summary()
    assert metrics.observe_run("ns", "a", "customEvents", run)
    assert not metrics.observe_run("ns", "a", "customEvents", run)
    assert not metrics.observe_run("ns", "a", "customEvents", run.model_copy())
    labels = {"namespace": "ns", "integration": "a", "data_type": "customEvents"}
    assert value(registry, "cdi_sync_runs_total", **labels, trigger="schedule", result="Success") == 1
    assert value(registry, "cdi_sync_rows_total", **labels, result="synced") == 10
    assert value(registry, "cdi_braze_requests_total", endpoint="/users/track", code="201") == 3
    # another run of the same integration, and the same start time in another integration, are new
    assert metrics.observe_run("ns", "a", "customEvents", summary(minutes=20))
    assert metrics.observe_run("ns", "b", "customEvents", run)
    assert value(registry, "cdi_sync_runs_total", **labels, trigger="schedule", result="Success") == 2


def test_runs_in_progress_are_not_counted_and_failures_are_not_successes() -> None:
    metrics, registry = fresh()
    running = summary(result=RunResult.RUNNING, finishedAt=None)
    assert not metrics.observe_run("ns", "a", "customAttributes", running)
    assert metrics.observe_run("ns", "a", "customAttributes", summary(result=RunResult.ERROR, message="boom"))
    labels = {"namespace": "ns", "integration": "a", "data_type": "customAttributes"}
    assert value(registry, "cdi_sync_runs_total", **labels, trigger="schedule", result="Error") == 1
    assert value(registry, "cdi_sync_last_success_timestamp_seconds", namespace="ns", integration="a") is None
    # a later Partial run is a completed sync: it sets the last success
    partial = summary(minutes=30, result=RunResult.PARTIAL)
    assert metrics.observe_run("ns", "a", "customAttributes", partial)
    assert partial.finished_at is not None
    assert value(registry, "cdi_sync_last_success_timestamp_seconds", namespace="ns", integration="a") == (
        partial.finished_at.timestamp()
    )


def test_a_restarted_operator_does_not_count_runs_that_finished_before_it_started() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, counting_since=START + timedelta(hours=1))
    old = summary(minutes=5)
    assert not metrics.observe_run("ns", "a", "customAttributes", old)
    labels = {"namespace": "ns", "integration": "a", "data_type": "customAttributes"}
    assert value(registry, "cdi_sync_runs_total", **labels, trigger="schedule", result="Success") is None
    # ... but the gauges, which are state, come from it
    assert old.finished_at is not None
    assert value(registry, "cdi_sync_last_success_timestamp_seconds", namespace="ns", integration="a") == (
        old.finished_at.timestamp()
    )
    assert value(registry, "cdi_sync_watermark_timestamp_seconds", namespace="ns", integration="a") is not None
    assert metrics.observe_run("ns", "a", "customAttributes", summary(minutes=90))


def test_the_seen_set_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "SEEN_RUNS", 3)
    metrics, _ = fresh()
    for i in range(5):
        assert metrics.observe_run("ns", "a", "customAttributes", summary(minutes=i))
    assert len(metrics._seen) == 3


def test_phases_connection_tests_braze_hook_and_forgetting_an_integration() -> None:
    metrics, registry = fresh()
    metrics.set_phases({"Active": 3, "Failed": 1})
    assert value(registry, "cdi_integrations", phase="Active") == 3
    assert value(registry, "cdi_integrations", phase="Failed") == 1
    assert value(registry, "cdi_integrations", phase="Draft") == 0
    metrics.set_phases({"Active": 2})
    assert value(registry, "cdi_integrations", phase="Failed") == 0

    metrics.observe_connection_test("redshift", "Passed")
    metrics.observe_connection_test("redshift", "Passed")
    assert value(registry, "cdi_connection_tests_total", type="redshift", result="Passed") == 2

    metrics.braze_response_hook("/users/delete", "201")
    assert value(registry, "cdi_braze_requests_total", endpoint="/users/delete", code="201") == 1

    metrics.observe_run("ns", "gone", "customAttributes", summary())
    metrics.forget_integration("ns", "gone")
    labels = {"namespace": "ns", "integration": "gone"}
    assert value(registry, "cdi_sync_watermark_timestamp_seconds", **labels) is None
    run_labels = {**labels, "data_type": "customAttributes", "trigger": "schedule", "result": "Success"}
    assert value(registry, "cdi_sync_runs_total", **run_labels) is None


def test_the_metrics_server_serves_the_registry() -> None:
    metrics, registry = fresh()
    metrics.observe_connection_test("duckdb", "Failed")
    server, thread = start_metrics_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert 'cdi_connection_tests_total{result="Failed",type="duckdb"} 1.0' in body
