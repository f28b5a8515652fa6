"""Deadlines, a change of source and rewinds, end to end: `cdi operator` as a subprocess against the real control
plane, PostgreSQL as the warehouse, runner pods on the local kubelet, the Braze emulator and a real SMTP server.

- A warehouse query that hangs (the test holds an ACCESS EXCLUSIVE lock on the table) is stopped at
  spec.sync.timeoutSeconds by the Job's activeDeadlineSeconds and recorded as Error with reason DeadlineExceeded:
  one e-mail, Synced=False; a rewind annotated meanwhile is refused with an Event; once the lock is gone the next
  run delivers what was left.
- spec.source changed to another table: all of its rows arrive, also those older than the old watermark, and the
  run record says the watermark belonged to another source; a credential swapped for another one to the same
  database and table keeps the watermark and sends nothing again.
- Rewind to a time: exactly the rows after it are sent again, once; the same value again is handled once; `full`
  sends every row again, once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import LocalKubelet, cdi
from harness.cdi import CDI, GROUP, VERSION, braze_spec, create_braze_secret, create_integration, create_pg_credential
from harness.helpers import pod_logs, wait_until
from harness.operator import OperatorProcess
from harness.postgres import connect, sql
from kubernetes import client
from test_crds_apiserver import install_crds
from test_operator_observability import BRAZE_KEY, Mailbox, jobs_finished
from test_operator_observability import braze as braze  # the emulator and the SMTP server
from test_operator_observability import smtp as smtp

from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e

CONTACT = "data-team@example.com"
TIMEOUT_SECONDS = 20  # room for a runner to start on a busy machine before it hangs
WAIT = 120
BASE = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=3)


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(
    kube_api: client.ApiClient,
    kubeconfig: str,
    braze: BrazeEmulator,
    smtp: tuple[Mailbox, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    install_crds(kube_api)
    env = {
        "CDI_RESYNC_SECONDS": "2",
        "CDI_RETEST_FAILED_SECONDS": "3600",
        "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "60",
        "CDI_SMTP_HOST": "127.0.0.1",
        "CDI_SMTP_PORT": str(smtp[1]),
        "CDI_SMTP_STARTTLS": "false",
        "CDI_RUNNER_RESOURCES": '{"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}',
    }
    proc = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()
    assert BRAZE_KEY not in proc.log_text(), "a secret reached the log"


@pytest.fixture
def pg_schema(pg_settings: dict[str, str]) -> Iterator[str]:
    name = f"resets_{uuid.uuid4().hex[:12]}"
    sql(pg_settings, f'CREATE SCHEMA "{name}"')
    yield name
    sql(pg_settings, f'DROP SCHEMA "{name}" CASCADE')


# --- helpers -------------------------------------------------------------------------------------------------------


def table_with_rows(pg: dict[str, str], schema: str, table: str, prefix: str, times: list[datetime]) -> None:
    sql(
        pg,
        f'CREATE TABLE IF NOT EXISTS "{schema}"."{table}" '
        "(UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(65535))",
    )
    add_rows(pg, schema, table, prefix, times, first=0)


def add_rows(pg: dict[str, str], schema: str, table: str, prefix: str, times: list[datetime], first: int) -> None:
    rows = [(at, f"{prefix}-{first + i}", f'{{"n": {first + i}}}') for i, at in enumerate(times)]
    sql(pg, f'INSERT INTO "{schema}"."{table}" VALUES (%s, %s, %s)', rows)


def get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cdi.custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, name)
    return obj


def patch(api: client.ApiClient, namespace: str, name: str, body: dict[str, Any]) -> None:
    cdi.custom(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, CDI, name, body)


def annotate(api: client.ApiClient, namespace: str, name: str, key: str, value: str) -> None:
    patch(api, namespace, name, {"metadata": {"annotations": {f"cdi.ingest.dev/{key}": value}}})


def wait_status(
    api: client.ApiClient,
    operator: OperatorProcess,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], Any],
    what: str,
    timeout: float = WAIT,
) -> dict[str, Any]:
    """Waits until check(status) is true; the status."""
    obj = cdi.wait_status(
        api, operator, namespace, name, lambda o: bool(check(o.get("status") or {})), what, timeout=timeout
    )
    return obj["status"]  # type: ignore[no-any-return]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return cdi.condition({"status": status}, type_)


def events(api: client.ApiClient, namespace: str, reason: str) -> list[Any]:
    return [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items if e.reason == reason]


def setup(api: client.ApiClient, namespace: str, pg: dict[str, str], braze_url: str, spec: dict[str, Any]) -> None:
    create_braze_secret(api, namespace, BRAZE_KEY)
    for credential in ("wh", "wh-rotated"):
        create_pg_credential(api, namespace, pg, name=credential)
    integration = {
        "credentialRef": {"name": "wh"},
        "dataType": "customAttributes",
        "schedule": "0 3 * * *",
        "contactEmails": [CONTACT],
        "braze": braze_spec(braze_url),
        **spec,
    }
    create_integration(api, namespace, "users", integration)


class Runs:
    """Starts runs by sync-now, one at a time, and waits for each one's record."""

    def __init__(self, api: client.ApiClient, operator: OperatorProcess, namespace: str) -> None:
        self.api, self.operator, self.namespace = api, operator, namespace
        self.count = 0

    def ready(self) -> None:
        """Active, with a passed connection test of the current spec (after a change, the test runs again)."""

        def tested(status: dict[str, Any]) -> bool:
            generation = get(self.api, self.namespace, "users")["metadata"]["generation"]
            return (
                status.get("phase") == "Active"
                and status.get("observedGeneration") == generation
                and (status.get("connectionTest") or {}).get("result") == "Passed"
            )

        wait_status(self.api, self.operator, self.namespace, "users", tested, "Active with a passed test")

    def idle(self) -> None:
        """No Job running: what a sync-now or a rewind needs to be accepted."""
        wait_until(
            lambda: jobs_finished(self.api, self.namespace) or not self.count,
            WAIT,
            "the Jobs to finish",
            details=self.operator.log_tail,
        )

    def start(self) -> str:
        self.idle()
        self.count += 1
        value = f"run-{self.count}"
        annotate(self.api, self.namespace, "users", "sync-now", value)
        wait_status(
            self.api,
            self.operator,
            self.namespace,
            "users",
            lambda s: s.get("lastHandledSyncNow") == value,
            f"sync-now {value} handled",
        )
        return value

    def run(self, timeout: float = WAIT * 2) -> dict[str, Any]:
        """One sync-now, to its end: its status.lastSync."""
        before = (get(self.api, self.namespace, "users").get("status") or {}).get("lastSync") or {}
        self.start()
        status = wait_status(
            self.api,
            self.operator,
            self.namespace,
            "users",
            lambda s: (
                (s.get("lastSync") or {}).get("startedAt") not in (None, before.get("startedAt"))
                and s["lastSync"].get("result") != "Running"
            ),
            "the run's record",
            timeout=timeout,
        )
        last: dict[str, Any] = status["lastSync"]
        assert last["trigger"] == "syncNow", last
        return last


def sent(braze: BrazeEmulator, prefix: str) -> Counter[str]:
    return Counter(
        str(a["external_id"]) for a in braze.tracked("attributes") if str(a.get("external_id")).startswith(prefix)
    )


# --- the tests -----------------------------------------------------------------------------------------------------


def test_a_hanging_query_is_stopped_at_the_deadline_once_and_the_next_run_proceeds(
    kube_api: client.ApiClient,
    operator: OperatorProcess,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    smtp: tuple[Mailbox, int],
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    mailbox = smtp[0]
    prefix = f"{pg_schema}-dl"
    table_with_rows(pg_settings, pg_schema, "users", prefix, [BASE + timedelta(seconds=i) for i in range(5)])
    source = {"database": pg_settings["CDI_PG_DATABASE"], "schema": pg_schema, "table": "users"}
    sync = {"settleSeconds": 0, "checkpointSeconds": 0, "timeoutSeconds": TIMEOUT_SECONDS}
    setup(kube_api, namespace, pg_settings, braze.url, {"source": source, "sync": sync})
    runs = Runs(kube_api, operator, namespace)
    runs.ready()
    cronjob = client.BatchV1Api(kube_api).read_namespaced_cron_job("users", namespace)
    assert cronjob.spec.job_template.spec.active_deadline_seconds == TIMEOUT_SECONDS
    resources = cronjob.spec.job_template.spec.template.spec.containers[0].resources
    assert resources.requests == {"cpu": "100m", "memory": "128Mi"} and resources.limits == {"memory": "1Gi"}
    assert runs.run()["rowsSynced"] == 5

    add_rows(pg_settings, pg_schema, "users", prefix, [BASE + timedelta(minutes=10, seconds=i) for i in range(3)], 5)
    lock = connect(pg_settings)
    lock.autocommit = False
    cursor = lock.cursor()
    cursor.execute(f'LOCK TABLE "{pg_schema}".users IN ACCESS EXCLUSIVE MODE')
    try:
        runs.start()
        wait_status(
            kube_api,
            operator,
            namespace,
            "users",
            lambda s: (s.get("lastSync") or {}).get("result") == "Running",
            "the run hanging on the lock",
        )
        annotate(kube_api, namespace, "users", "rewind", "full")
        status = wait_status(
            kube_api, operator, namespace, "users", lambda s: s.get("lastHandledRewind") == "full", "rewind handled"
        )
        assert not status.get("pendingRewind"), "a rewind is refused while a run is in progress"
        refused = events(kube_api, namespace, "RewindRefused")
        assert refused and "a sync is running" in refused[0].message, [e.message for e in refused]

        status = wait_status(
            kube_api,
            operator,
            namespace,
            "users",
            lambda s: (
                str((s.get("lastSync") or {}).get("message")).startswith("DeadlineExceeded")
                and s.get("lastNotifiedFailure")
            ),
            "the run stopped at its deadline, notified",
            timeout=WAIT + TIMEOUT_SECONDS,
        )
    finally:
        lock.rollback()
        lock.close()
    last = status["lastSync"]
    assert last["message"].startswith("DeadlineExceeded: "), last
    assert f"timeoutSeconds={TIMEOUT_SECONDS}" in last["message"]
    assert status["runs"][0]["startedAt"] == last["startedAt"]
    synced = condition(status, "Synced")
    assert (synced["status"], synced["reason"]) == ("False", "DeadlineExceeded"), synced
    wait_until(lambda: len(mailbox.received()) >= 1 or None, 30, "the e-mail", details=operator.log_tail)
    job = client.BatchV1Api(kube_api).read_namespaced_job(last["job"], namespace)
    assert any(c.reason == "DeadlineExceeded" for c in job.status.conditions or [])
    created = [
        e.message for e in events(kube_api, namespace, "SuccessfulCreate") if e.involved_object.name == last["job"]
    ]
    pod = created[0].removeprefix("Created pod: ")
    assert "error: Terminated: " in pod_logs(kube_api, local_kubelet, namespace, pod), "the runner ends on SIGTERM"

    after = runs.run()
    assert after["result"] == "Success", after
    assert after["rowsSynced"] == 3, after
    assert sent(braze, prefix) == Counter({f"{prefix}-{i}": 1 for i in range(8)})
    received = mailbox.received()
    assert len(received) == 1, [m["Subject"] for m in received]
    assert "DeadlineExceeded" in received[0]["Subject"] and f"{namespace}/users" in received[0]["Subject"]


def test_a_new_source_starts_from_the_beginning_a_rotated_credential_does_not_and_rewinds(
    kube_api: client.ApiClient,
    operator: OperatorProcess,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    a, b = f"{pg_schema}-a", f"{pg_schema}-b"
    table_with_rows(pg_settings, pg_schema, "users_a", a, [BASE + timedelta(hours=1, seconds=i) for i in range(5)])
    b_times = [BASE + timedelta(seconds=i) for i in range(4)]  # all older than users_a's watermark
    table_with_rows(pg_settings, pg_schema, "users_b", b, b_times)
    database = pg_settings["CDI_PG_DATABASE"]
    source = {"database": database, "schema": pg_schema, "table": "users_a"}
    setup(kube_api, namespace, pg_settings, braze.url, {"source": source, "sync": {"settleSeconds": 0}})
    runs = Runs(kube_api, operator, namespace)
    runs.ready()
    first = runs.run()
    assert first["rowsSynced"] == 5 and not first.get("sourceChanged"), first

    # another table: every row of it, though older than the watermark; the record says why.
    patch(kube_api, namespace, "users", {"spec": {"source": {**source, "table": "users_b"}}})
    runs.ready()
    moved = runs.run()
    assert moved["result"] == "Success" and moved["rowsSynced"] == 4, moved
    port = pg_settings["CDI_PG_PORT"]
    old_source = f"redshift://{pg_settings['CDI_PG_HOST']}:{port}/{database}.{pg_schema}.users_a".lower()
    assert moved["sourceChanged"] == old_source, moved
    assert "started from the beginning" in moved["message"]
    assert sent(braze, b) == Counter({f"{b}-{i}": 1 for i in range(4)})
    watermark = get(kube_api, namespace, "users")["status"]["watermark"]
    assert watermark["source"] == old_source.replace("users_a", "users_b")

    # another credential to the same database and table: the watermark holds, nothing is sent again.
    patch(kube_api, namespace, "users", {"spec": {"credentialRef": {"name": "wh-rotated"}}})
    runs.ready()
    rotated = runs.run()
    assert rotated["result"] == "Success" and rotated["rowsSynced"] == 0 and not rotated.get("sourceChanged")
    assert sent(braze, b) == Counter({f"{b}-{i}": 1 for i in range(4)})

    # rewind to the time of row 1: rows 2 and 3 again, once.
    to = b_times[1].replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    runs.idle()
    annotate(kube_api, namespace, "users", "rewind", to)
    status = wait_status(kube_api, operator, namespace, "users", lambda s: s.get("pendingRewind"), "rewind accepted")
    assert status["lastHandledRewind"] == to
    rewound = runs.run()
    assert rewound["rowsSynced"] == 2 and rewound["rewoundTo"].startswith(b_times[1].isoformat()), rewound
    assert sent(braze, b) == Counter({f"{b}-0": 1, f"{b}-1": 1, f"{b}-2": 2, f"{b}-3": 2})
    assert not get(kube_api, namespace, "users")["status"].get("pendingRewind")

    # the same value again: handled once.
    annotate(kube_api, namespace, "users", "rewind", "")
    annotate(kube_api, namespace, "users", "rewind", to)
    again = runs.run()
    assert again["rowsSynced"] == 0 and not again.get("rewoundTo"), again
    assert len(events(kube_api, namespace, "Rewind")) == 1

    # full: every row again, once.
    runs.idle()
    annotate(kube_api, namespace, "users", "rewind", "full")
    wait_status(kube_api, operator, namespace, "users", lambda s: s.get("pendingRewind"), "rewind full accepted")
    full = runs.run()
    assert full["rowsSynced"] == 4 and full["rewoundTo"] == "full", full
    assert sent(braze, b) == Counter({f"{b}-0": 2, f"{b}-1": 2, f"{b}-2": 3, f"{b}-3": 3})
    assert sent(braze, a) == Counter({f"{a}-{i}": 1 for i in range(5)})
    assert len(events(kube_api, namespace, "Rewind")) == 2
