"""Every run accounted for (issue 10), end to end: the operator as a subprocess with per-integration runner
identities, the runner in pods of the local kubelet (or of the real node, CDI_E2E_NODE=containerd), PostgreSQL as
the warehouse and the Braze emulator, slowed down so that runs overlap.

- sync-now and a Job made from the CronJob's jobTemplate at the same time: every event arrives exactly once, the
  skipped run's record names the run that held the integration, and the skipped sync-now gets an Event;
- two sync-now values in quick succession and a Job of the template: still exactly once;
- a runner SIGKILLed while it holds its claim (by pid with the local kubelet, through containerd on the real node):
  its Job's retry waits out the claim (spec.sync.leaseSeconds) and delivers the rest, nothing lost, duplicates
  within the in-flight window;
- ten runs finishing while the operator is stopped: all ten in status.runs, each counted once in
  cdi_sync_runs_total after the restart, and not again after another restart;
- 5,000 invalid rows in one run: 5,000 row-error log lines, counts by reason in status, no unmasked e-mail.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import LocalKubelet
from harness.cdi import (
    CDI,
    GROUP,
    VERSION,
    braze_spec,
    create_braze_secret,
    create_integration,
    create_pg_credential,
    custom,
)
from harness.helpers import pod_logs, wait_until
from harness.node import Node, service_host, sigkill_container
from harness.postgres import sql
from kubernetes import client
from kubernetes.client import ApiException
from test_operator_observability import MetricsOperator, free_port, labels

from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e

BRAZE_KEY = "e2e-runs-braze-key"
WAIT = 120
ROWS = 3000
LEASE_SECONDS = 30  # longer than the Job controller's 10 s back-off: a retry finds its predecessor's claim alive


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    # 40 requests of 75 events one at a time, 0.2 s each: a run lasts about 8 s, so that runs overlap.
    with BrazeEmulator(api_key=BRAZE_KEY, latency=0.2, host=service_host()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def operator(crds: list[str], kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsOperator]:
    # No CDI_RUNNER_SERVICE_ACCOUNT: each integration gets its own runner identity, Lease rights included.
    proc = MetricsOperator(
        kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", "http://127.0.0.1:9", free_port(), free_port()
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def schema(pg_settings: dict[str, str]) -> Iterator[str]:
    name = f"runs_{uuid.uuid4().hex[:12]}"
    sql(pg_settings, f'CREATE SCHEMA "{name}"')
    yield name
    sql(pg_settings, f'DROP SCHEMA "{name}" CASCADE')


def batch(api: client.ApiClient) -> Any:
    return client.BatchV1Api(api)


def get(api: client.ApiClient, namespace: str, name: str = "events") -> dict[str, Any]:
    obj: dict[str, Any] = custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, name)
    return obj


def status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return get(api, namespace).get("status") or {}


def create_events_table(pg: dict[str, str], schema: str, rows: int) -> None:
    sql(pg, f'CREATE TABLE "{schema}".events (UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(1000))')
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    sql(
        pg,
        f"INSERT INTO \"{schema}\".events SELECT %s + i * interval '1 millisecond', 'u-' || mod(i, 500), "
        '\'{"name": "purchase_viewed", "properties": {"n": \' || i || \'}}\' FROM generate_series(0, %s) AS i',
        [(base, rows - 1)],
    )


def create_objects(
    api: client.ApiClient,
    namespace: str,
    pg: dict[str, str],
    schema: str,
    braze_url: str,
    *,
    table: str = "events",
    data_type: str = "customEvents",
    sync: dict[str, Any] | None = None,
) -> None:
    create_braze_secret(api, namespace, BRAZE_KEY)
    create_pg_credential(api, namespace, pg)
    spec = {
        "credentialRef": {"name": "wh"},
        "source": {"database": pg["CDI_PG_DATABASE"], "schema": schema, "table": table},
        "dataType": data_type,
        "schedule": "0 3 * * *",
        "sync": {"settleSeconds": 0, "checkpointSeconds": 0, "leaseSeconds": LEASE_SECONDS, **(sync or {})},
        "braze": {**braze_spec(braze_url), "maxInFlight": 1},
    }
    create_integration(api, namespace, "events", spec)


def wait_active(api: client.ApiClient, operator: MetricsOperator, namespace: str) -> None:
    wait_until(
        lambda: status(api, namespace).get("phase") == "Active" or None,
        WAIT,
        "phase Active",
        interval=0.5,
        details=operator.log_tail,
    )


def annotate_sync_now(api: client.ApiClient, namespace: str, value: str) -> None:
    custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, "events", {"metadata": {"annotations": {"cdi.ingest.dev/sync-now": value}}}
    )


def job_from_template(api: client.ApiClient, namespace: str, name: str) -> None:
    """A Job made from the CronJob's jobTemplate, as the CronJob controller makes one at a scheduled time (and as
    `kubectl create job --from=cronjob/…` does)."""
    cronjob = batch(api).read_namespaced_cron_job("events", namespace)
    plain = api.sanitize_for_serialization(cronjob)
    template = copy.deepcopy(plain["spec"]["jobTemplate"])
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": (template.get("metadata") or {}).get("labels") or {},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": "events",
                    "uid": plain["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    batch(api).create_namespaced_job(namespace, job)


def jobs_done(api: client.ApiClient, namespace: str, count: int) -> list[Any] | None:
    jobs: list[Any] = batch(api).list_namespaced_job(namespace).items
    ended = ("Complete", "Failed")
    terminal = [j for j in jobs if any(c.type in ended and c.status == "True" for c in j.status.conditions or [])]
    return jobs if len(jobs) >= count and len(terminal) == len(jobs) else None


def scrape(operator: MetricsOperator) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics, or nothing while the operator is still starting."""
    try:
        return operator.scrape()
    except OSError:
        return {}


def job_done(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Finished, or already gone: the CronJob controller keeps only successfulJobsHistoryLimit Jobs it owns."""
    try:
        job = batch(api).read_namespaced_job(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or [])


def logs_of(api: client.ApiClient, kubelet: LocalKubelet | None, namespace: str) -> str:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    return "\n".join(pod_logs(api, kubelet, namespace, p.metadata.name) for p in pods)


def explain(
    api: client.ApiClient, kubelet: LocalKubelet | None, namespace: str, operator: MetricsOperator
) -> Callable[[], str]:
    """What a timed-out wait shows: the Jobs, the pods' logs, the runs, the operator's log."""

    def details() -> str:
        jobs = [(j.metadata.name, j.status.to_dict()) for j in batch(api).list_namespaced_job(namespace).items]
        tail = "\n".join(logs_of(api, kubelet, namespace).splitlines()[-60:])
        return f"jobs: {jobs}\nruns: {records(api, namespace)}\npods (tail):\n{tail}\n{operator.log_tail(15)}"

    return details


def delivered(braze: BrazeEmulator) -> Counter[int]:
    return Counter(int(e["properties"]["n"]) for e in braze.tracked("events"))


def assert_exactly_once(braze: BrazeEmulator) -> None:
    counts = delivered(braze)
    assert set(counts) == set(range(ROWS)), f"{ROWS - len(counts)} row(s) missing"
    twice = {n: c for n, c in counts.items() if c > 1}
    assert not twice, f"{len(twice)} row(s) sent more than once"


def records(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return list(status(api, namespace).get("runs") or [])


@pytest.fixture
def events(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    braze: BrazeEmulator,
    namespace: str,
    pg_settings: dict[str, str],
    schema: str,
) -> None:
    """The Active integration `events` of ROWS custom events."""
    create_events_table(pg_settings, schema, ROWS)
    create_objects(kube_api, namespace, pg_settings, schema, braze.url)
    wait_active(kube_api, operator, namespace)


# --- one run at a time, whoever starts it ---------------------------------------------------------------------------


def test_sync_now_and_a_job_of_the_template_at_the_same_time_send_every_event_once(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    namespace: str,
    events: None,
) -> None:
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("cdi-run-events", namespace)
    assert lease.metadata.owner_references[0].kind == "CdiIntegration"

    annotate_sync_now(kube_api, namespace, "one")
    wait_until(
        lambda: batch(kube_api).list_namespaced_job(namespace).items or None, 30, "the sync-now Job", interval=0.2
    )
    job_from_template(kube_api, namespace, "events-scheduled")
    wait_until(
        lambda: jobs_done(kube_api, namespace, 2),
        WAIT,
        "both Jobs to finish",
        details=explain(kube_api, local_kubelet, namespace, operator),
    )

    assert_exactly_once(braze)
    runs = records(kube_api, namespace)
    by_result = {r["result"]: r for r in runs}
    assert sorted(by_result) == ["Skipped", "Success"], runs
    done, skipped = by_result["Success"], by_result["Skipped"]
    assert done["rowsSynced"] == ROWS and done["rowsRead"] == ROWS
    assert done["runId"] in skipped["heldBy"] and done["job"] in skipped["heldBy"], skipped
    assert skipped["rowsRead"] == 0 and skipped["job"] != done["job"]
    assert done.get("watermarkBefore") is None and done["watermark"]
    assert status(kube_api, namespace)["lastSync"]["runId"] == done["runId"]  # a skipped run leaves lastSync alone
    for job in batch(kube_api).list_namespaced_job(namespace).items:
        assert job.status.succeeded == 1, job.metadata.name  # a skipped run ends cleanly
    if skipped["trigger"] == "syncNow":  # it is not lost silently
        wait_until(
            lambda: (
                [
                    e
                    for e in client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
                    if e.reason == "SyncNowSkipped" and done["runId"] in (e.message or "")
                ]
                or None
            ),
            30,
            "the SyncNowSkipped Event",
            details=operator.log_tail,
        )


def test_two_sync_now_values_in_quick_succession_and_a_job_of_the_template(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    namespace: str,
    events: None,
) -> None:

    annotate_sync_now(kube_api, namespace, "a")
    annotate_sync_now(kube_api, namespace, "b")
    job_from_template(kube_api, namespace, "events-manual")
    wait_until(
        lambda: status(kube_api, namespace).get("lastHandledSyncNow") == "b" or None,
        WAIT,
        "sync-now b handled",
        details=operator.log_tail,
    )
    # The operator refuses a sync-now while a Job runs, so there are one or two Jobs: sync-now's, the template's.
    wait_until(
        lambda: jobs_done(kube_api, namespace, 1),
        WAIT,
        "the Jobs to finish",
        details=explain(kube_api, local_kubelet, namespace, operator),
    )

    assert_exactly_once(braze)
    runs = records(kube_api, namespace)
    assert [r["result"] for r in runs].count("Success") >= 1
    synced = sum(r["rowsSynced"] for r in runs)
    assert synced == ROWS, runs
    for record in runs:
        if record["result"] == "Skipped":
            assert any(other["runId"] in record["heldBy"] for other in runs if other is not record), record


def test_a_runner_killed_holding_its_claim_blocks_only_until_the_claim_expires(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    node: Node | None,
    braze: BrazeEmulator,
    namespace: str,
    events: None,
) -> None:
    job_from_template(kube_api, namespace, "events-killed")  # backoffLimit 2: the Job retries a failed pod
    core = client.CoreV1Api(kube_api)

    def running_container() -> str | None:
        if len(braze.tracked("events")) < 750:  # ten requests in: it holds the claim and has checkpointed
            return None
        for pod in core.list_namespaced_pod(namespace).items:
            for container in pod.status.container_statuses or []:
                if container.state.running and container.container_id:
                    return str(container.container_id)
        return None

    # The process dies without running any exit code of its own (no SIGTERM handler, no release of the claim).
    sigkill_container(wait_until(running_container, WAIT, "the runner to be sending", interval=0.1), node)
    before_kill = len(braze.tracked("events"))
    assert before_kill < ROWS

    # The retry (a new pod of the same Job) finds the claim of its dead predecessor, waits at most leaseSeconds for
    # it to expire, takes it over and delivers the rest.
    wait_until(
        lambda: jobs_done(kube_api, namespace, 1),
        WAIT,
        "the Job's retry to finish",
        details=explain(kube_api, local_kubelet, namespace, operator),
    )
    job = batch(kube_api).read_namespaced_job("events-killed", namespace)
    assert job.status.succeeded == 1 and job.status.failed == 1
    counts = delivered(braze)
    assert set(counts) == set(range(ROWS)), "nothing is lost"
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= 2 * 75, duplicates  # at most what was in flight (one request) plus one checkpoint
    log = logs_of(kube_api, local_kubelet, namespace)
    assert "is held by an earlier pod of Job events-killed; waiting for it to expire" in log, log[-3000:]
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("cdi-run-events", namespace)
    assert lease.spec.holder_identity is None  # released at the end of the retry
    assert lease.spec.lease_transitions >= 1
    runs = records(kube_api, namespace)
    assert sorted(r["result"] for r in runs) == ["Error", "Success"], runs
    finished, killed = runs  # newest first
    assert 0 < finished["rowsSynced"] < ROWS and finished["watermarkBefore"], finished  # continued from a checkpoint
    # the killed run's record, left Running by its runner, is closed by the run that took over its claim
    assert killed["runId"] in finished["message"] or finished["runId"] in killed["message"], killed
    assert "stopped without finishing" in killed["message"] and killed["finishedAt"]


# --- runs recorded where they happen ----------------------------------------------------------------------------------


def test_ten_runs_while_the_operator_is_stopped_are_each_counted_once(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    namespace: str,
    pg_settings: dict[str, str],
    schema: str,
) -> None:
    create_events_table(pg_settings, schema, 10)
    create_objects(kube_api, namespace, pg_settings, schema, braze.url, sync={"runHistory": 12})
    wait_active(kube_api, operator, namespace)
    operator.stop()
    try:
        for i in range(10):
            job_from_template(kube_api, namespace, f"events-{i}")
            wait_until(
                lambda name=f"events-{i}": job_done(kube_api, namespace, name),
                WAIT,
                f"run {i} to finish",
                details=explain(kube_api, local_kubelet, namespace, operator),
            )
    finally:
        operator.start()

    runs = records(kube_api, namespace)
    assert len(runs) == 10 and {r["result"] for r in runs} == {"Success"}, runs
    assert [r["job"] for r in runs] == [f"events-{i}" for i in reversed(range(10))]  # newest first
    assert len(delivered(braze)) == 10
    key = (
        "cdi_sync_runs_total",
        labels(
            namespace=namespace, integration="events", data_type="customEvents", trigger="schedule", result="Success"
        ),
    )
    wait_until(lambda: scrape(operator).get(key) == 10 or None, WAIT, "ten runs counted", details=operator.log_tail)
    wait_until(
        lambda: len(status(kube_api, namespace).get("countedRuns") or []) == 10 or None,
        30,
        "status.countedRuns",
        details=operator.log_tail,
    )
    # Counted once: a restarted operator does not count them again.
    operator.stop()
    operator.start()
    wait_until(
        lambda: scrape(operator).get(("cdi_integrations", labels(phase="Active")), 0) >= 1 or None,
        WAIT,
        "the restarted operator",
        details=operator.log_tail,
    )
    assert key not in operator.scrape()


def test_every_row_error_is_one_log_line_with_a_masked_identifier(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    namespace: str,
    pg_settings: dict[str, str],
    schema: str,
) -> None:
    sql(pg_settings, f'CREATE TABLE "{schema}".users (UPDATED_AT TIMESTAMP, EMAIL VARCHAR(64), PAYLOAD VARCHAR(100))')
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    sql(
        pg_settings,
        f"INSERT INTO \"{schema}\".users SELECT %s + i * interval '1 millisecond', "
        "'person' || i || '@example.com', CASE WHEN mod(i, 2) = 0 THEN '{\"bad key\": 1}' ELSE '{not json' END "
        "FROM generate_series(0, 4999) AS i",
        [(base,)],
    )
    with BrazeEmulator(api_key=BRAZE_KEY, host=service_host()) as braze:
        create_objects(kube_api, namespace, pg_settings, schema, braze.url, table="users", data_type="customAttributes")
        wait_active(kube_api, operator, namespace)
        job_from_template(kube_api, namespace, "events-invalid")
        wait_until(
            lambda: jobs_done(kube_api, namespace, 1),
            WAIT,
            "the run to finish",
            details=explain(kube_api, local_kubelet, namespace, operator),
        )
        assert braze.tracked("attributes") == []

    log = logs_of(kube_api, local_kubelet, namespace)
    lines = [line for line in log.splitlines() if 'msg="row error"' in line]
    assert len(lines) == 5000
    assert Counter(line.split("reason=")[1].split()[0] for line in lines) == {
        "INVALID_KEY": 2500,
        "INVALID_PAYLOAD_JSON": 2500,
    }
    assert all('identifier="email=p***@example.com"' in line and "updated_at=" in line for line in lines[:50])
    assert "@example.com" not in log.replace("p***@example.com", ""), "an unmasked e-mail reached the log"
    last = status(kube_api, namespace)["lastSync"]
    assert last["result"] == "Partial" and last["rowsFailed"] == 5000
    assert last["rowErrorsByReason"] == {"INVALID_KEY": 2500, "INVALID_PAYLOAD_JSON": 2500}
    assert len(last["rowErrors"]) == 20
    assert "person" not in json.dumps(last)
