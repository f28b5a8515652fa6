"""`cdi sync --in-cluster` in a Job's pod on the real control plane, with no operator: the runner reads its
CdiIntegration, WarehouseCredential and Secrets through its ServiceAccount (least privilege), syncs PostgreSQL (the
Redshift stand-in of hack/postgres.sh) to the Braze emulator in this process, and keeps its watermark and last run
in the CR's status. Also the status store's optimistic concurrency against the real apiserver, and the operator's
record of a run its deadline stopped racing a runner's record.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from harness import LocalKubelet
from harness.helpers import pod_logs, wait_until
from harness.node import RUNNER_IMAGE, service_host
from harness.postgres import redshift_credential, sql
from kubernetes import client
from test_crds_apiserver import install_crds

from cdi_operator.api.models import CDI_PLURAL, CdiIntegrationStatus, RunResult, RunSummary, Watermark
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller import deadline
from cdi_operator.controller.status import StatusWriter
from cdi_operator.kube import Kube
from cdi_operator.kube.aio import KubeApi
from cdi_operator.runner.status_store import CrStatusStore

pytestmark = pytest.mark.e2e

GROUP, VERSION, CDI = "cdi.ingest.dev", "v1alpha1", "cdiintegrations"
BRAZE_KEY = "e2e-braze-rest-key"
COLUMNS = "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(65535)"


@pytest.fixture(scope="module")
def pg(pg_settings: dict[str, str]) -> dict[str, str]:
    return pg_settings


@pytest.fixture
def schema(pg: dict[str, str]) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    sql(pg, f'CREATE SCHEMA "{name}"')
    yield name
    sql(pg, f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY, host=service_host()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def crds(kube_api: client.ApiClient) -> list[str]:
    return install_crds(kube_api)


def _create_objects(
    api: client.ApiClient, namespace: str, pg: dict[str, str], schema: str, braze_url: str
) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "pg"},
            "stringData": {"password": pg["CDI_PG_PASSWORD"]},
        },
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "braze"}, "stringData": {"api-key": BRAZE_KEY}})
    # The integration's run Lease, which the operator creates (runner/claim.py); the runner may only update it.
    client.CoordinationV1Api(api).create_namespaced_lease(
        namespace, {"metadata": {"name": "cdi-run-users"}, "spec": {}}
    )
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "warehousecredentials",
        redshift_credential(pg, "pg"),
    )
    return custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP,
        VERSION,
        namespace,
        CDI,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CdiIntegration",
            "metadata": {"name": "users"},
            "spec": {
                "credentialRef": {"name": "wh"},
                "source": {"database": pg["CDI_PG_DATABASE"], "schema": schema, "table": "users"},
                "dataType": "customAttributes",
                "schedule": "0 * * * *",
                "braze": {"restEndpoint": braze_url, "apiKeySecretRef": {"name": "braze", "key": "api-key"}},
                "sync": {"settleSeconds": 0, "checkpointSeconds": 0},
            },
        },
    )


def _runner_account(api: client.ApiClient, namespace: str, name: str, secrets: list[str]) -> None:
    """A ServiceAccount with what the runner needs and nothing more; `secrets` are the Secrets it may read."""
    client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rules: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": [CDI], "verbs": ["get"], "resourceNames": ["users"]},
        {"apiGroups": [GROUP], "resources": [f"{CDI}/status"], "verbs": ["patch"], "resourceNames": ["users"]},
        {"apiGroups": [GROUP], "resources": ["warehousecredentials"], "verbs": ["get"], "resourceNames": ["wh"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "update"],
            "resourceNames": ["cdi-run-users"],
        },
    ]
    if secrets:
        rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": secrets})
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )


def _run_job(
    api: client.ApiClient, kubelet: LocalKubelet | None, namespace: str, job: str, account: str
) -> tuple[bool, int | None, str]:
    """Run the runner in a Job; (succeeded, the container's exit code, its log)."""
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "serviceAccountName": account,
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "runner",
                                "image": RUNNER_IMAGE,
                                "args": [
                                    "sync",
                                    "--in-cluster",
                                    "--integration",
                                    f"{namespace}/users",
                                    "--trigger",
                                    "syncNow",
                                ],
                            }
                        ],
                    }
                },
            },
        },
    )

    def finished() -> str | None:
        status = batch.read_namespaced_job(job, namespace).status
        for condition in status.conditions or []:
            if condition.type in ("Complete", "Failed") and condition.status == "True":
                return str(condition.type)
        return None

    pods = client.CoreV1Api(api)

    def state() -> str:
        items = pods.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        return "\n".join(pod_logs(api, kubelet, namespace, p.metadata.name) for p in items)

    outcome = wait_until(finished, 120, f"Job {job} to finish", interval=0.5, details=state)
    pod = pods.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    return outcome == "Complete", terminated.exit_code if terminated else None, state()


def _five_users(pg: dict[str, str], schema: str) -> datetime:
    """The users table with u-0 .. u-4, a second apart from an hour ago; the first row's UPDATED_AT."""
    base = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    sql(pg, f'CREATE TABLE "{schema}"."users" ({COLUMNS})')
    rows = [(base + timedelta(seconds=i), f"u-{i}", json.dumps({"plan": "pro", "n": i})) for i in range(5)]
    sql(pg, f'INSERT INTO "{schema}"."users" VALUES (%s, %s, %s)', rows)
    return base


def _status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "users")
    return obj.get("status") or {}


def _summary_line(log: str) -> dict[str, Any]:
    lines = [line for line in log.splitlines() if line.startswith("{")]
    assert lines, log
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def test_runner_job_syncs_and_keeps_its_state_in_the_status(
    kube_api: client.ApiClient,
    local_kubelet: LocalKubelet | None,
    namespace: str,
    crds: list[str],
    pg: dict[str, str],
    schema: str,
    braze: BrazeEmulator,
) -> None:
    base = _five_users(pg, schema)
    _create_objects(kube_api, namespace, pg, schema, braze.url)
    _runner_account(kube_api, namespace, "runner", ["pg", "braze"])
    # The operator's fields, which the runner must leave alone.
    operator_status = {
        "phase": "Active",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Scheduled", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
        "runs": [{"trigger": "schedule", "startedAt": "2026-01-01T00:00:00Z", "result": "Success"}],
        "lastHandledSyncNow": "1",
    }
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CDI, "users", {"status": operator_status}
    )
    before = _status(kube_api, namespace)  # as the apiserver stored it, with its defaults

    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-1", "runner")

    assert ok and code == 0, log
    assert [o["external_id"] for o in braze.tracked("attributes")] == [f"u-{i}" for i in range(5)]
    record = _summary_line(log)
    assert (record["rowsRead"], record["rowsSynced"], record["rowsFailed"], record["result"]) == (5, 5, 0, "Success")
    assert BRAZE_KEY not in log and pg["CDI_PG_PASSWORD"] not in log
    status = _status(kube_api, namespace)
    watermark = Watermark.model_validate(status["watermark"])
    assert watermark.updated_at == (base + timedelta(seconds=4)).replace(tzinfo=UTC)
    last = RunSummary.model_validate(status["lastSync"])
    assert (last.result, last.trigger, last.rows_synced, last.rows_read) == (RunResult.SUCCESS, "syncNow", 5, 5)
    assert last.finished_at is not None and last.braze_requests == {"/users/track:201": 1}
    for key in operator_status:
        if key != "runs":
            assert status[key] == before[key], key
    # status.runs is the runners' since issue 10: this run's record comes first, the earlier one is kept.
    assert status["runs"][0] == status["lastSync"] and status["runs"][1:] == before["runs"]

    # A second run finds nothing new and sends nothing.
    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-2", "runner")

    assert ok and code == 0, log
    assert len(braze.tracked("attributes")) == 5
    assert braze.counts.get("requests", 0) == 1
    status = _status(kube_api, namespace)
    last = RunSummary.model_validate(status["lastSync"])
    # the boundary row is read again (UPDATED_AT >= watermark) and skipped as already sent
    assert (last.result, last.rows_synced, last.rows_skipped) == (RunResult.SUCCESS, 0, last.rows_read)
    assert last.braze_requests is None and "brazeRequests" not in status["lastSync"]
    assert Watermark.model_validate(status["watermark"]) == watermark


def test_runner_without_access_to_the_secrets_fails_and_says_why(
    kube_api: client.ApiClient,
    local_kubelet: LocalKubelet | None,
    namespace: str,
    crds: list[str],
    pg: dict[str, str],
    schema: str,
    braze: BrazeEmulator,
) -> None:
    sql(pg, f'CREATE TABLE "{schema}"."users" ({COLUMNS})')
    _create_objects(kube_api, namespace, pg, schema, braze.url)
    _runner_account(kube_api, namespace, "no-secrets", [])

    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-denied", "no-secrets")

    assert not ok and code in (1, 2), log
    assert "Secret" in log and "forbidden" in log, log
    last = _status(kube_api, namespace)["lastSync"]
    assert last["result"] == "Error"
    assert f"Secret {namespace}/pg: forbidden" in last["message"]
    assert "grant the runner's ServiceAccount" in last["message"]
    assert braze.counts.get("requests", 0) == 0
    assert "watermark" not in _status(kube_api, namespace)


def test_status_store_retries_a_stale_resource_version_and_keeps_other_fields(
    kube_api: client.ApiClient, namespace: str, crds: list[str], pg: dict[str, str], tmp_path: Path
) -> None:
    obj = _create_objects(kube_api, namespace, pg, "public", "http://127.0.0.1:9")
    stale = obj["metadata"]["resourceVersion"]
    custom = client.CustomObjectsApi(kube_api)
    # Another writer (the operator) changes the status after the runner read the object.
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CDI, "users", {"status": {"phase": "Active", "lastHandledSyncNow": "x"}}
    )
    store = CrStatusStore(Kube(kube_api), namespace, "users", resource_version=stale, job="sync-7")
    mark = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    store.save_watermark(Watermark(updatedAt=mark, boundaryFingerprints=["ab", "cd"]))

    assert store.conflicts == 1
    status = _status(kube_api, namespace)
    assert status["phase"] == "Active" and status["lastHandledSyncNow"] == "x"
    assert status["watermark"] == {
        "updatedAt": "2026-01-02T03:04:05Z",
        "boundaryFingerprints": ["ab", "cd"],
        "boundaryComplete": False,
    }
    assert store.load_watermark() == Watermark(updatedAt=mark, boundaryFingerprints=["ab", "cd"])

    # An oversized tie group is saved as complete; the next watermark must clear that flag (a merge patch would
    # keep a key left out, and a stale boundaryComplete would skip rows).
    store.save_watermark(Watermark(updatedAt=mark, boundaryComplete=True))
    assert _status(kube_api, namespace)["watermark"]["boundaryComplete"] is True
    # A list is replaced, not merged; a finished run's fields do not survive into the next lastSync.
    store.save_watermark(Watermark(updatedAt=mark, boundaryFingerprints=["ef"]))
    assert _status(kube_api, namespace)["watermark"]["boundaryComplete"] is False
    finished = RunSummary(
        trigger="schedule",
        started_at=mark,
        finished_at=mark + timedelta(seconds=3),
        result=RunResult.PARTIAL,
        message="row errors by reason: X: 1",
    )
    store.record_run(finished)
    store.mark_running(RunSummary(trigger="syncNow", started_at=mark + timedelta(hours=1), result=RunResult.RUNNING))
    status = _status(kube_api, namespace)
    assert status["watermark"]["boundaryFingerprints"] == ["ef"]
    assert status["lastSync"]["result"] == "Running" and status["lastSync"]["job"] == "sync-7"
    assert "finishedAt" not in status["lastSync"] and status["lastSync"].get("message", "") == ""

    # Conflicts on every attempt: the store gives up with a message after its retries.
    class AlwaysStale(Kube):
        def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
            found = super().get_custom(plural, namespace, name)
            found["metadata"]["resourceVersion"] = stale
            return found

    from cdi_operator.runner.status_store import StatusStoreError

    stubborn = CrStatusStore(AlwaysStale(kube_api), namespace, "users", resource_version=stale, retries=2)
    with pytest.raises(StatusStoreError, match="gave up after 3 conflicts"):
        stubborn.save_watermark(Watermark(updatedAt=mark))


def test_a_bulk_load_at_one_updated_at_fits_in_the_status(
    kube_api: client.ApiClient,
    local_kubelet: LocalKubelet | None,
    namespace: str,
    crds: list[str],
    pg: dict[str, str],
    schema: str,
    braze: BrazeEmulator,
) -> None:
    # 100,000 fingerprints would be about 1.9 MB of status: more than etcd takes, the run could never checkpoint.
    loaded_at = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    sql(pg, f'CREATE TABLE "{schema}"."users" ({COLUMNS})')
    sql(
        pg,
        f'INSERT INTO "{schema}"."users" SELECT %s, \'bulk-\' || i, \'{{"plan": "pro"}}\' '
        "FROM generate_series(1, 100000) AS i",
        [(loaded_at,)],
    )
    _create_objects(kube_api, namespace, pg, schema, braze.url)
    _runner_account(kube_api, namespace, "runner", ["pg", "braze"])

    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-bulk", "runner")

    assert ok and code == 0, log
    assert len(braze.tracked("attributes")) == 100_000
    watermark = _status(kube_api, namespace)["watermark"]
    assert watermark["boundaryComplete"] is True and watermark["boundaryFingerprints"] == []
    assert len(json.dumps(_status(kube_api, namespace))) < 50_000

    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-bulk-2", "runner")
    assert ok and code == 0, log
    assert _summary_line(log)["rowsSynced"] == 0 and len(braze.tracked("attributes")) == 100_000


def test_one_claim_at_a_time_and_a_watermark_moved_by_another_writer_is_never_overwritten(
    kube_api: client.ApiClient, namespace: str, crds: list[str], pg: dict[str, str]
) -> None:
    from cdi_operator.runner.claim import ClaimLost, RunClaim, RunIdentity
    from cdi_operator.runner.status_store import WatermarkMoved

    _create_objects(kube_api, namespace, pg, "public", "http://127.0.0.1:9")
    kube = Kube(kube_api)
    first = RunClaim(kube, namespace, "users", RunIdentity("run-1", "schedule", job="j1", pod="p1"), lease_seconds=30)
    second = RunClaim(kube, namespace, "users", RunIdentity("run-2", "syncNow", job="j2"), lease_seconds=30)

    assert first.take() is None and first.held()
    holder = second.take()
    assert holder is not None and holder.startswith("run run-1 (Job j1, pod p1, trigger schedule, since ")
    first.renew()
    first.release()
    with pytest.raises(ClaimLost):
        first.check()  # released: this run may write nothing more
    assert second.take() is None and second.took_over is None  # a released claim is free, not abandoned

    store = CrStatusStore(Kube(kube_api), namespace, "users", claim=second)
    mark = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert store.load_watermark() is None
    store.save_watermark(Watermark(updatedAt=mark))
    theirs = {"updatedAt": "2026-06-01T00:00:00Z", "boundaryFingerprints": [], "boundaryComplete": False}
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CDI, "users", {"status": {"watermark": theirs}}
    )
    with pytest.raises(WatermarkMoved, match="changed by another writer"):
        store.save_watermark(Watermark(updatedAt=mark + timedelta(seconds=1)))
    assert _status(kube_api, namespace)["watermark"] == theirs


def test_the_deadline_record_and_a_runner_record_written_at_once_are_both_kept(
    kube_api: client.ApiClient, namespace: str, crds: list[str], pg: dict[str, str]
) -> None:
    """The operator's write of a run its Job's deadline stopped races a runner's own record: the operator has read
    the object, a runner records a skipped run, then the operator writes. Its patch carries the resourceVersion it
    read, so the API server refuses it (409) instead of replacing status.runs; it re-reads and keeps both."""
    _create_objects(kube_api, namespace, pg, "public", "http://127.0.0.1:9")
    started = datetime(2026, 1, 1, 3, 0, 5, tzinfo=UTC)
    stopped = CrStatusStore(Kube(kube_api), namespace, "users", job="users-29000000", run_id="r-1")
    stopped.mark_running(RunSummary(trigger="schedule", started_at=started, result=RunResult.RUNNING))
    read_by_operator = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, "users"
    )
    skipped = CrStatusStore(Kube(kube_api), namespace, "users", job="users-now-1", run_id="r-2")
    skipped.record_history_only(
        RunSummary(
            trigger="syncNow",
            started_at=started + timedelta(minutes=30),
            finished_at=started + timedelta(minutes=30, seconds=1),
            result=RunResult.SKIPPED,
            held_by="run r-1 (Job users-29000000)",
        )
    )
    job = {
        "metadata": {"name": "users-29000000"},
        "spec": {"activeDeadlineSeconds": 3600},
        "status": {
            "startTime": "2026-01-01T03:00:00Z",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "lastTransitionTime": "2026-01-01T04:00:00Z",
                }
            ],
        },
    }
    writer = StatusWriter(KubeApi(kube_api), CDI_PLURAL, read_by_operator, CdiIntegrationStatus)

    sent = asyncio.run(writer.guarded(partial(deadline.status_patch, [job], run_history=10)))

    assert sent is not None
    status = _status(kube_api, namespace)
    assert [(r["runId"], r["result"]) for r in status["runs"]] == [("r-2", "Skipped"), ("r-1", "Error")]
    assert status["lastSync"]["runId"] == "r-1" and status["lastSync"]["message"].startswith("DeadlineExceeded: ")


def test_the_runner_reads_the_brazeworkspace_its_integration_names_or_says_which_field_names_none(
    kube_api: client.ApiClient,
    local_kubelet: LocalKubelet | None,
    namespace: str,
    crds: list[str],
    pg: dict[str, str],
    schema: str,
    braze: BrazeEmulator,
) -> None:
    _five_users(pg, schema)
    _create_objects(kube_api, namespace, pg, schema, braze.url)
    custom = client.CustomObjectsApi(kube_api)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, "users", {"spec": {"braze": {"workspaceRef": {"name": "prod"}}}}
    )
    _runner_account(kube_api, namespace, "runner", ["pg", "braze"])
    client.RbacAuthorizationV1Api(kube_api).patch_namespaced_role(  # what runner_access.py grants for a workspaceRef
        "runner",
        namespace,
        [
            {
                "op": "add",
                "path": "/rules/-",
                "value": {
                    "apiGroups": [GROUP],
                    "resources": ["brazeworkspaces"],
                    "verbs": ["get"],
                    "resourceNames": ["prod"],
                },
            }
        ],
    )

    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-no-workspace", "runner")

    assert not ok and code == 2, log
    assert "spec.braze.workspaceRef.name 'prod' names no BrazeWorkspace" in log, log
    assert "spec.braze.workspaceRef.name 'prod'" in _status(kube_api, namespace)["lastSync"]["message"]
    assert braze.counts.get("requests", 0) == 0

    custom.create_namespaced_custom_object(  # a newer contract: 50,000 a minute, 2 objects a request (for the test)
        GROUP,
        VERSION,
        namespace,
        "brazeworkspaces",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BrazeWorkspace",
            "metadata": {"name": "prod"},
            "spec": {"maxObjectsPerRequest": 2, "limits": {"usersTrack": {"requests": 50000, "seconds": 60}}},
        },
    )
    ok, code, log = _run_job(kube_api, local_kubelet, namespace, "sync-workspace", "runner")

    assert ok and code == 0, log
    assert sorted(o["external_id"] for o in braze.tracked("attributes")) == [f"u-{i}" for i in range(5)]
    assert braze.counts.get("requests", 0) == 3, "5 rows in requests of at most the contract's 2 objects"
