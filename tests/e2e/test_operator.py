"""The operator (`cdi operator` as a subprocess with the admin kubeconfig) against the real control plane, with
PostgreSQL (the Redshift stand-in of hack/postgres.sh) as the warehouse: activation gated by the connection test,
the CronJob it creates, the reasons an integration stays Draft, the credential's in-use finalizer, sync-now creating
exactly one Job across an operator restart, and the full flow through the runner and the Braze emulator.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import LocalKubelet, cdi
from harness.cdi import CDI, GROUP, VERSION, WHC, condition, create_pg_credential, custom, get, wait_status
from harness.helpers import wait_until
from harness.node import RUNNER_IMAGE, service_host
from harness.operator import OperatorProcess
from harness.postgres import sql
from kubernetes import client
from kubernetes.client import ApiException

from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e

BRAZE_KEY = "e2e-operator-braze-key"
RUNNER_SA = "cdi-runner"
WAIT = 90
OPERATOR_ENV = {  # quick resyncs, no retest of a failed test during a test
    "CDI_RUNNER_SERVICE_ACCOUNT": RUNNER_SA,
    "CDI_RESYNC_SECONDS": "2",
    "CDI_RETEST_FAILED_SECONDS": "3600",
    "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "60",
}


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def pg_schema(pg_settings: dict[str, str]) -> Iterator[str]:
    name = f"op_{uuid.uuid4().hex[:12]}"
    sql(pg_settings, f'CREATE SCHEMA "{name}"')
    sql(
        pg_settings,
        f'CREATE TABLE "{name}".users (UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(65535))',
    )
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    sql(
        pg_settings,
        f'INSERT INTO "{name}".users VALUES (%s, %s, %s)',
        [(base + timedelta(seconds=i), f"user-{i}", f'{{"plan": "p{i}"}}') for i in range(5)],
    )
    yield name
    sql(pg_settings, f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(scope="module")
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY, host=service_host()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def operator(
    crds: list[str], kubeconfig: str, braze: BrazeEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {
        **OPERATOR_ENV,
        "CDI_BRAZE_DEFAULT_REST_ENDPOINT": braze.url,
        "CDI_BRAZE_DEFAULT_API_KEY_SECRET_NAME": "braze-default",
    }
    proc = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()
    assert BRAZE_KEY not in proc.log_path.read_text(encoding="utf-8", errors="replace"), "a secret reached the log"


# --- helpers -------------------------------------------------------------------------------------------------------


def create_integration(
    api: client.ApiClient,
    namespace: str,
    name: str,
    credential: str,
    database: str,
    schema: str,
    table: str = "users",
    braze_url: str | None = None,
    annotations: dict[str, str] | None = None,
) -> None:
    spec: dict[str, Any] = {
        "credentialRef": {"name": credential},
        "source": {"database": database, "schema": schema, "table": table},
        "dataType": "customAttributes",
        "schedule": "0 3 * * *",
        "timeZone": "Europe/Paris",
        "sync": {"settleSeconds": 0, "checkpointSeconds": 0},
    }
    if braze_url:
        spec["braze"] = cdi.braze_spec(braze_url)
    cdi.create_integration(api, namespace, name, spec, annotations)


def phase_is(phase: str, reason: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        if status.get("phase") != phase:
            return False
        return reason is None or condition(obj, "Stalled").get("reason") == reason

    return check


def jobs_of(api: client.ApiClient, namespace: str, integration: str) -> list[Any]:
    return list(
        client.BatchV1Api(api)
        .list_namespaced_job(namespace, label_selector=f"cdi.ingest.dev/integration={integration}")
        .items
    )


def annotate(api: client.ApiClient, namespace: str, name: str, key: str, value: str) -> None:
    custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, name, {"metadata": {"annotations": {key: value}}}
    )


# --- tests ---------------------------------------------------------------------------------------------------------


def test_activation_cronjob_sync_now_restart_and_credential_finalizer(
    kube_api: client.ApiClient, operator: OperatorProcess, namespace: str, pg_settings: dict[str, str], pg_schema: str
) -> None:
    create_pg_credential(kube_api, namespace, pg_settings)
    create_integration(kube_api, namespace, "users", "wh", pg_settings["CDI_PG_DATABASE"], pg_schema)

    obj = wait_status(kube_api, operator, namespace, "users", phase_is("Active"), "phase Active")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Ready")["status"] == "True"
    assert condition(obj, "ConnectionVerified")["status"] == "True"
    assert condition(obj, "Stalled")["status"] == "False"
    assert condition(obj, "Reconciling")["status"] == "False"
    test = status["connectionTest"]
    assert test["result"] == "Passed"
    assert [c.upper() for c in test["columns"]] == ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"]
    assert 1 <= len(test["preview"]) <= 3

    cronjob = client.BatchV1Api(kube_api).read_namespaced_cron_job("users", namespace)
    assert cronjob.spec.schedule == "0 3 * * *"
    assert cronjob.spec.time_zone == "Europe/Paris"
    assert cronjob.spec.concurrency_policy == "Forbid"
    assert cronjob.spec.suspend is False
    assert cronjob.metadata.labels["cdi.ingest.dev/integration"] == "users"
    owner = cronjob.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("CdiIntegration", "users", obj["metadata"]["uid"])
    pod = cronjob.spec.job_template.spec.template.spec
    assert pod.service_account_name == RUNNER_SA
    container = pod.containers[0]
    assert container.image == RUNNER_IMAGE
    assert container.args == ["sync", "--in-cluster", "--integration", f"{namespace}/users", "--trigger", "schedule"]
    env = {e.name: e for e in container.env}
    assert env["CDI_BRAZE_REST_ENDPOINT"].value.startswith("http://")
    assert env["CDI_BRAZE_API_KEY"].value_from.secret_key_ref.name == "braze-default"

    credential = wait_status(
        kube_api,
        operator,
        namespace,
        "wh",
        lambda o: (
            condition(o, "Ready").get("status") == "True"
            and "cdi.ingest.dev/in-use" in (o["metadata"].get("finalizers") or [])
        ),
        "credential Ready with the in-use finalizer",
        plural=WHC,
    )
    assert condition(credential, "ConnectionVerified")["status"] == "True"

    # suspend → Suspended and the CronJob suspended; back.
    custom(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, "users", {"spec": {"suspend": True}}
    )
    wait_status(kube_api, operator, namespace, "users", phase_is("Suspended"), "phase Suspended")
    assert client.BatchV1Api(kube_api).read_namespaced_cron_job("users", namespace).spec.suspend is True
    custom(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, "users", {"spec": {"suspend": False}}
    )
    wait_status(kube_api, operator, namespace, "users", phase_is("Active"), "phase Active again")

    # sync-now: one Job, also when annotated again with the same value.
    annotate(kube_api, namespace, "users", "cdi.ingest.dev/sync-now", "first")
    wait_status(
        kube_api,
        operator,
        namespace,
        "users",
        lambda o: o["status"].get("lastHandledSyncNow") == "first",
        "lastHandledSyncNow=first",
    )
    jobs = jobs_of(kube_api, namespace, "users")
    assert len(jobs) == 1, [j.metadata.name for j in jobs]
    job = jobs[0]
    assert job.metadata.name.startswith("users-now-")
    assert job.metadata.owner_references[0].kind == "CronJob"
    assert job.spec.template.spec.containers[0].args[-2:] == ["--trigger", "syncNow"]
    annotate(kube_api, namespace, "users", "cdi.ingest.dev/sync-now", "first")

    # a restart in the middle: kill, annotate a new value while down, start again.
    operator.kill()
    annotate(kube_api, namespace, "users", "cdi.ingest.dev/sync-now", "second")
    operator.start()
    obj = wait_status(
        kube_api,
        operator,
        namespace,
        "users",
        lambda o: o["status"].get("lastHandledSyncNow") == "second",
        "lastHandledSyncNow=second after the restart",
    )
    assert obj["status"]["phase"] == "Active"
    jobs = jobs_of(kube_api, namespace, "users")
    names = sorted(j.metadata.name for j in jobs)
    # The first Job has not finished (no runner ServiceAccount here, so no pod): the second value is refused.
    assert len(jobs) == 1, names
    crons = client.BatchV1Api(kube_api).list_namespaced_cron_job(namespace).items
    assert [c.metadata.name for c in crons] == ["users"]
    events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    assert any(e.reason == "SyncNowRefused" and "already running" in (e.message or "") for e in events)

    # the credential cannot be deleted while the integration is Active.
    custom(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, WHC, "wh")
    blocked = wait_status(
        kube_api,
        operator,
        namespace,
        "wh",
        lambda o: "users" in condition(o, "Ready").get("message", ""),
        "a status message naming the integration that blocks deletion",
        plural=WHC,
    )
    assert blocked["metadata"].get("deletionTimestamp")
    custom(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "users")
    wait_until(
        lambda: get(kube_api, WHC, namespace, "wh") is None,
        WAIT,
        "the credential to be deleted",
        details=operator.log_tail,
    )


def test_draft_reasons(
    kube_api: client.ApiClient, operator: OperatorProcess, namespace: str, pg_settings: dict[str, str], pg_schema: str
) -> None:
    database = pg_settings["CDI_PG_DATABASE"]
    role = f"nogrant_{uuid.uuid4().hex[:8]}"
    sql(pg_settings, f"CREATE ROLE {role} LOGIN PASSWORD 'nogrant-pw'")
    try:
        sql(pg_settings, f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {role}')
        create_pg_credential(kube_api, namespace, pg_settings)
        create_pg_credential(kube_api, namespace, pg_settings, name="limited", user=role, password="nogrant-pw")

        # Another table than "first"'s: two integrations on one table are refused whatever credential they use.
        sql(pg_settings, f'CREATE TABLE "{pg_schema}".private (LIKE "{pg_schema}".users)')
        create_integration(kube_api, namespace, "denied", "limited", database, pg_schema, table="private")
        create_integration(kube_api, namespace, "missing", "wh", database, pg_schema, table="nosuchtable")
        create_integration(kube_api, namespace, "orphan", "nosuchcredential", database, pg_schema)
        create_integration(kube_api, namespace, "first", "wh", database, pg_schema)

        denied = wait_status(
            kube_api, operator, namespace, "denied", phase_is("Draft", "PermissionDenied"), "Draft PermissionDenied"
        )
        assert condition(denied, "ConnectionVerified")["status"] == "False"
        assert condition(denied, "Ready")["status"] == "False"
        wait_status(kube_api, operator, namespace, "missing", phase_is("Draft", "TableMissing"), "Draft TableMissing")
        orphan = wait_status(
            kube_api, operator, namespace, "orphan", phase_is("Draft", "CredentialNotFound"), "CredentialNotFound"
        )
        assert "nosuchcredential" in condition(orphan, "Stalled")["message"]
        wait_status(kube_api, operator, namespace, "first", phase_is("Active"), "phase Active")
        create_integration(kube_api, namespace, "second", "limited", database, pg_schema)  # another credential
        second = wait_status(
            kube_api, operator, namespace, "second", phase_is("Draft", "DuplicateTable"), "Draft DuplicateTable"
        )
        assert "first" in condition(second, "Stalled")["message"]
        for name in ("denied", "missing", "orphan", "second"):
            with pytest.raises(ApiException) as exc:
                client.BatchV1Api(kube_api).read_namespaced_cron_job(name, namespace)
            assert exc.value.status == 404

        # sync-now on a Draft integration is refused (and handled once).
        annotate(kube_api, namespace, "missing", "cdi.ingest.dev/sync-now", "x")
        wait_status(
            kube_api,
            operator,
            namespace,
            "missing",
            lambda o: o["status"].get("lastHandledSyncNow") == "x",
            "sync-now handled",
        )
        assert jobs_of(kube_api, namespace, "missing") == []
        # the table appears: a test-connection request activates it.
        sql(
            pg_settings,
            f'CREATE TABLE "{pg_schema}".nosuchtable (UPDATED_AT TIMESTAMP, EMAIL VARCHAR(64), PAYLOAD VARCHAR(100))',
        )
        annotate(kube_api, namespace, "missing", "cdi.ingest.dev/test-connection", "1")
        wait_status(kube_api, operator, namespace, "missing", phase_is("Active"), "Active after the re-test")
        for name in ("denied", "missing", "orphan", "first", "second"):
            custom(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, CDI, name)
    finally:
        sql(pg_settings, f"DROP OWNED BY {role}")
        sql(pg_settings, f"DROP ROLE {role}")


def service_account(
    api: client.ApiClient, namespace: str, name: str, rules: list[dict[str, Any]], allowed_in: str | None = None
) -> None:
    """The ServiceAccount `name` of `namespace`, allowed `rules` in namespace `allowed_in` (default: its own)."""
    allowed_in = allowed_in or namespace
    client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(allowed_in, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        allowed_in,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )


def _runner_account(api: client.ApiClient, namespace: str) -> None:
    rules = [
        {"apiGroups": [GROUP], "resources": [CDI], "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": [f"{CDI}/status"], "verbs": ["get", "patch", "update"]},
        {"apiGroups": [GROUP], "resources": [WHC], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"]},  # the run claim
    ]
    service_account(api, namespace, RUNNER_SA, rules)


def create_syncable(
    api: client.ApiClient,
    namespace: str,
    pg: dict[str, str],
    schema: str,
    braze_url: str,
    annotations: dict[str, str] | None = None,
) -> None:
    """The integration `users` on `schema`.users with all a runner needs: its account, the Braze key, the credential."""
    _runner_account(api, namespace)
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "braze"}, "stringData": {"api-key": BRAZE_KEY}}
    )
    create_pg_credential(api, namespace, pg)
    create_integration(
        api, namespace, "users", "wh", pg["CDI_PG_DATABASE"], schema, braze_url=braze_url, annotations=annotations
    )


def test_full_flow_sync_now_through_the_runner(
    kube_api: client.ApiClient,
    operator: OperatorProcess,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    create_syncable(kube_api, namespace, pg_settings, pg_schema, braze.url, {"cdi.ingest.dev/sync-now": "go"})
    wait_status(kube_api, operator, namespace, "users", phase_is("Active"), "phase Active")

    def finished() -> Callable[[dict[str, Any]], bool]:
        # The runner's record is in status.runs from its start (Running): wait for it to finish.
        return lambda o: any(r.get("finishedAt") for r in o["status"].get("runs") or [])

    obj = wait_status(kube_api, operator, namespace, "users", finished(), "a finished run in status.runs", timeout=180)
    status = obj["status"]
    assert status["lastHandledSyncNow"] == "go"
    assert status["lastSync"]["result"] == "Success", status["lastSync"]
    assert status["lastSync"]["trigger"] == "syncNow"
    assert status["lastSync"]["rowsSynced"] == 5
    assert status["runs"][0]["startedAt"] == status["lastSync"]["startedAt"]
    assert status["watermark"]["updatedAt"]
    external_ids = {a.get("external_id") for a in braze.tracked("attributes")}
    assert {f"user-{i}" for i in range(5)} <= external_ids
    assert len(jobs_of(kube_api, namespace, "users")) == 1
