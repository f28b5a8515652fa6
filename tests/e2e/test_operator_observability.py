"""The operator's metrics and failure e-mail, end to end: `cdi operator` as a subprocess against the real control
plane, PostgreSQL as the warehouse, the Braze emulator, the runner in a pod of the local kubelet, and a real SMTP
server (aiosmtpd) on loopback.

A sync-now runs to Success and the operator's /metrics shows it (runs, rows, duration, watermark, last success,
Braze requests, integrations by phase, connection tests); then the Braze key in the Secret is made wrong, a second
sync-now fails as a whole, and exactly one e-mail arrives (naming the integration and the reason, without a secret),
with a Warning Event and the condition Synced=False; a restarted operator sends no second one. The table is then
dropped and a re-test stalls the integration (TableMissing): one more e-mail, with that reason. Deleting the
integration drops its series.
"""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from threading import Lock
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from harness import LocalKubelet
from harness.cdi import (
    CDI,
    GROUP,
    VERSION,
    braze_spec,
    condition,
    create_braze_secret,
    create_integration,
    create_pg_credential,
    custom,
    get,
    wait_status,
)
from harness.helpers import wait_until
from harness.node import service_host
from harness.operator import OperatorProcess
from harness.postgres import sql
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e

BRAZE_KEY = "e2e-observability-braze-key"
WRONG_BRAZE_KEY = "e2e-observability-wrong-key"
CONTACT = "data-team@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- an SMTP server that keeps what it receives -------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: every message received, parsed."""

    def __init__(self) -> None:
        self._lock = Lock()
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self.messages.append(parsed)
            self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def received(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


# --- PostgreSQL, CRDs, Braze --------------------------------------------------------------------------------------


def insert_users(pg: dict[str, str], schema: str, first: int, count: int) -> None:
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=30)
    sql(
        pg,
        f'INSERT INTO "{schema}".users VALUES (%s, %s, %s)',
        [(base + timedelta(seconds=i), f"user-{i}", f'{{"plan": "p{i}"}}') for i in range(first, first + count)],
    )


@pytest.fixture
def pg_schema(pg_settings: dict[str, str]) -> Iterator[str]:
    name = f"obs_{uuid.uuid4().hex[:12]}"
    sql(pg_settings, f'CREATE SCHEMA "{name}"')
    sql(
        pg_settings,
        f'CREATE TABLE "{name}".users (UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(65535))',
    )
    sql(
        pg_settings,
        f'INSERT INTO "{name}".users VALUES (%s, %s, %s)',
        [
            (datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1, seconds=-i), f"user-{i}", "{}")
            for i in range(5)
        ],
    )
    yield name
    sql(pg_settings, f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(scope="module")
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY, host=service_host()) as emulator:
        yield emulator


# --- the operator -------------------------------------------------------------------------------------------------


class MetricsOperator(OperatorProcess):
    """The operator with /metrics on `metrics_port` and failure e-mail to the SMTP server on `smtp_port`."""

    def __init__(self, kubeconfig: str, log_path: Path, braze_url: str, metrics_port: int, smtp_port: int) -> None:
        super().__init__(
            kubeconfig,
            log_path,
            {
                "CDI_RESYNC_SECONDS": "2",
                "CDI_RETEST_FAILED_SECONDS": "3600",
                "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "60",
                "CDI_BRAZE_DEFAULT_REST_ENDPOINT": braze_url,
                "CDI_BRAZE_DEFAULT_API_KEY_SECRET_NAME": "braze-default",
                "CDI_METRICS_PORT": str(metrics_port),
                "CDI_SMTP_HOST": "127.0.0.1",
                "CDI_SMTP_PORT": str(smtp_port),
                "CDI_SMTP_STARTTLS": "false",
                "CDI_SMTP_FROM": "cdi-operator@example.com",
            },
        )
        self.metrics_port = metrics_port

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """/metrics as {(sample name, labels): value}."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


@pytest.fixture(scope="module")
def operator(
    crds: list[str],
    kubeconfig: str,
    braze: BrazeEmulator,
    smtp: tuple[Mailbox, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MetricsOperator]:
    proc = MetricsOperator(
        kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", braze.url, free_port(), smtp[1]
    )
    proc.start()
    yield proc
    proc.stop()
    log = proc.log_path.read_text(encoding="utf-8", errors="replace")
    assert BRAZE_KEY not in log and WRONG_BRAZE_KEY not in log, "a secret reached the log"


# --- helpers ------------------------------------------------------------------------------------------------------


def create_objects(
    api: client.ApiClient,
    namespace: str,
    pg: dict[str, str],
    schema: str,
    braze_url: str,
    notifications: dict[str, Any] | None = None,
) -> None:
    create_braze_secret(api, namespace, BRAZE_KEY)
    create_pg_credential(api, namespace, pg)
    spec = {
        "credentialRef": {"name": "wh"},
        "source": {"database": pg["CDI_PG_DATABASE"], "schema": schema, "table": "users"},
        "dataType": "customAttributes",
        "schedule": "0 3 * * *",
        "contactEmails": [CONTACT],
        "sync": {"settleSeconds": 0, "checkpointSeconds": 0},
        "braze": braze_spec(braze_url),
        **({"notifications": notifications} if notifications is not None else {}),
    }
    create_integration(api, namespace, "users", spec, {"cdi.ingest.dev/sync-now": "go"})


def jobs_finished(api: client.ApiClient, namespace: str) -> bool | None:
    """True when every Job of the namespace has a terminal condition (what sync-now waits for)."""
    jobs: list[Any] = client.BatchV1Api(api).list_namespaced_job(namespace).items
    terminal = ("Complete", "Failed")
    done = [any(c.type in terminal and c.status == "True" for c in (j.status.conditions or [])) for j in jobs]
    return (bool(done) and all(done)) or None


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- the test -----------------------------------------------------------------------------------------------------


def test_metrics_after_a_sync_and_one_email_per_failure_across_a_restart(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    smtp: tuple[Mailbox, int],
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    mailbox = smtp[0]
    create_objects(kube_api, namespace, pg_settings, pg_schema, braze.url)
    ns, it, dt = namespace, "users", "customAttributes"

    # 1. sync-now → Success, and what /metrics shows about it.
    obj = wait_status(
        kube_api,
        operator,
        ns,
        it,
        lambda o: (o.get("status") or {}).get("lastSync", {}).get("result") in ("Success", "Partial", "Error"),
        "a finished sync-now",
        timeout=180,
    )
    status = obj["status"]
    assert status["phase"] == "Active"
    assert status["lastSync"]["result"] == "Success", status["lastSync"]
    assert status["lastSync"]["trigger"] == "syncNow"
    assert status["lastSync"]["rowsSynced"] == 5
    runs_key = (
        "cdi_sync_runs_total",
        labels(namespace=ns, integration=it, data_type=dt, trigger="syncNow", result="Success"),
    )
    samples = wait_until(
        lambda: s if (s := _scrape_or_none(operator)).get(runs_key) == 1 else None,
        30,
        "cdi_sync_runs_total of the run",
        interval=0.5,
        details=operator.log_tail,
    )
    assert samples[("cdi_sync_rows_total", labels(namespace=ns, integration=it, data_type=dt, result="synced"))] == 5
    assert samples[("cdi_sync_rows_total", labels(namespace=ns, integration=it, data_type=dt, result="failed"))] == 0
    assert samples[("cdi_sync_duration_seconds_count", labels(namespace=ns, integration=it, data_type=dt))] == 1
    watermark = samples[("cdi_sync_watermark_timestamp_seconds", labels(namespace=ns, integration=it))]
    assert watermark == pytest.approx(timestamp(status["watermark"]["updatedAt"]), abs=1e-3)
    last_success = samples[("cdi_sync_last_success_timestamp_seconds", labels(namespace=ns, integration=it))]
    assert last_success == pytest.approx(timestamp(status["lastSync"]["finishedAt"]), abs=1e-3)
    assert samples[("cdi_integrations", labels(phase="Active"))] >= 1
    assert ("cdi_integrations", labels(phase="Failed")) in samples
    assert samples[("cdi_connection_tests_total", labels(type="redshift", result="Passed"))] >= 2  # credential + it
    for label, count in (status["lastSync"].get("brazeRequests") or {}).items():
        endpoint, _, code = label.rpartition(":")
        assert samples[("cdi_braze_requests_total", labels(endpoint=endpoint, code=code))] >= count
    assert status["lastSync"].get("brazeRequests"), "the runner reports its Braze responses"
    synced = wait_status(
        kube_api, operator, ns, it, lambda o: condition(o, "Synced").get("status") == "True", "Synced=True"
    )
    assert condition(synced, "Synced")["reason"] == "Success"
    assert mailbox.received() == []

    # The Job must be finished (its Complete condition) before another sync-now is accepted.
    wait_until(lambda: jobs_finished(kube_api, ns), 60, "the Job to finish", interval=0.5, details=operator.log_tail)

    # 2. a wrong Braze key and new rows: the next sync-now fails as a whole → one e-mail, an Event, a condition.
    first_started = status["lastSync"]["startedAt"]
    client.CoreV1Api(kube_api).patch_namespaced_secret("braze", ns, {"stringData": {"api-key": WRONG_BRAZE_KEY}})
    insert_users(pg_settings, pg_schema, 5, 3)
    custom(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, CDI, it, {"metadata": {"annotations": {"cdi.ingest.dev/sync-now": "again"}}}
    )
    obj = wait_status(
        kube_api,
        operator,
        ns,
        it,
        lambda o: (
            o["status"].get("lastSync", {}).get("startedAt") != first_started
            and o["status"]["lastSync"].get("result") == "Error"
            and bool(o["status"].get("lastNotifiedFailure"))
        ),
        "a failed sync-now, notified",
        timeout=180,
    )
    status = obj["status"]
    synced = condition(obj, "Synced")
    assert synced["status"] == "False"
    assert synced["reason"] == "BrazeUnauthorized", synced
    assert "|BrazeUnauthorized|" in status["lastNotifiedFailure"]
    wait_until(lambda: len(mailbox.received()) >= 1 or None, 30, "the e-mail", details=operator.log_tail)
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    warnings = [e for e in events if e.type == "Warning" and e.reason == "BrazeUnauthorized"]
    assert warnings and all(e.involved_object.name == it for e in warnings)
    samples = operator.scrape()
    error_runs = (
        "cdi_sync_runs_total",
        labels(namespace=ns, integration=it, data_type=dt, trigger="syncNow", result="Error"),
    )
    assert samples.get(error_runs, 0) >= 1
    assert samples[runs_key] == 1  # the successful run is still counted once

    # The runner's Job retries (backoffLimit) meet the same failure: still one e-mail. Let them finish.
    wait_until(lambda: jobs_finished(kube_api, ns), 180, "the Job to finish", interval=1, details=operator.log_tail)
    time.sleep(5)  # two resyncs
    received = mailbox.received()
    assert len(received) == 1, [m["Subject"] for m in received]
    mail = received[0]
    body = mail.get_content() if not mail.is_multipart() else str(mail)
    whole = f"{mail['Subject']}\n{body}"
    assert f"{ns}/{it}" in mail["Subject"] and "BrazeUnauthorized" in mail["Subject"], mail["Subject"]
    assert "BrazeUnauthorized" in body and f"{pg_schema}" in body
    assert mailbox.recipients[0] == [CONTACT]
    for secret in (BRAZE_KEY, WRONG_BRAZE_KEY, pg_settings["CDI_PG_PASSWORD"]):
        assert secret not in whole, "a secret reached the e-mail"
    notified = get(kube_api, CDI, ns, it)["status"]["lastNotifiedFailure"]  # type: ignore[index]

    # 3. a restarted operator does not tell it again, nor count old runs as new.
    operator.stop()
    operator.start()
    wait_until(
        lambda: _scrape_or_none(operator).get(("cdi_integrations", labels(phase="Active")), 0) >= 1 or None,
        60,
        "the restarted operator to see the integration",
        interval=0.5,
        details=operator.log_tail,
    )
    time.sleep(6)  # three resyncs
    assert len(mailbox.received()) == 1, [m["Subject"] for m in mailbox.received()]
    assert get(kube_api, CDI, ns, it)["status"]["lastNotifiedFailure"] == notified  # type: ignore[index]
    samples = operator.scrape()
    assert runs_key not in samples and error_runs not in samples  # finished before this operator started
    assert ("cdi_sync_watermark_timestamp_seconds", labels(namespace=ns, integration=it)) in samples

    # 4. the table goes away and a re-test stalls the integration: a sync-level failure of an integration that had
    #    been syncing (not a run) → one more e-mail, with that reason.
    sql(pg_settings, f'DROP TABLE "{pg_schema}".users')
    custom(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, CDI, it, {"metadata": {"annotations": {"cdi.ingest.dev/test-connection": "1"}}}
    )
    obj = wait_status(
        kube_api,
        operator,
        ns,
        it,
        lambda o: "|TableMissing|" in (o["status"].get("lastNotifiedFailure") or ""),
        "the stall e-mailed",
    )
    assert obj["status"]["phase"] == "Draft"
    assert condition(obj, "Stalled")["reason"] == "TableMissing"
    wait_until(lambda: len(mailbox.received()) >= 2 or None, 30, "the second e-mail", details=operator.log_tail)
    time.sleep(3)
    received = mailbox.received()
    assert len(received) == 2, [m["Subject"] for m in received]
    assert "TableMissing" in received[1]["Subject"] and f"{ns}/{it}" in received[1]["Subject"]
    assert samples_after(operator, ("cdi_integrations", labels(phase="Draft"))) >= 1

    # 5. deleting the integration drops its series.
    custom(kube_api).delete_namespaced_custom_object(GROUP, VERSION, ns, CDI, it)
    wait_until(
        lambda: (
            (
                ("cdi_sync_watermark_timestamp_seconds", labels(namespace=ns, integration=it))
                not in _scrape_or_none(operator)
            )
            or None
        ),
        30,
        "the series of the deleted integration to go",
        interval=0.5,
        details=operator.log_tail,
    )


def test_sync_alerts_each_rule_once_per_run(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    smtp: tuple[Mailbox, int],
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    """spec.notifications through the CRD, the runner's runs and the operator to the SMTP server: a run with rows
    is told Succeeded, one without changes also NoChanges, one with a third of its rows refused RowErrorRate; each
    once, whatever the resyncs and the Jobs' retries."""
    mailbox = smtp[0]
    ns, it = namespace, "users"
    rules = {"rowErrorRatePercent": 10, "onSuccess": True, "onSuccessWithoutChanges": True}
    create_objects(kube_api, ns, pg_settings, pg_schema, braze.url, notifications=rules)
    assert (get(kube_api, CDI, ns, it) or {})["spec"]["notifications"] == {**rules, "onSyncError": True}  # the defaults

    def told() -> list[str]:
        return [str(m["X-CDI-Alert"]) for m in mailbox.received() if f"{ns}/{it}:" in str(m["Subject"])]

    def finished_run(previous: str | None) -> dict[str, Any]:
        obj = wait_status(
            kube_api,
            operator,
            ns,
            it,
            lambda o: (
                (o.get("status") or {}).get("lastSync", {}).get("startedAt") not in (None, previous)
                and o["status"]["lastSync"].get("finishedAt") is not None
            ),
            "a finished sync-now",
            timeout=180,
        )
        wait_until(
            lambda: jobs_finished(kube_api, ns), 60, "the Job to finish", interval=0.5, details=operator.log_tail
        )
        return obj["status"]["lastSync"]  # type: ignore[no-any-return]

    def sync_now(value: str) -> None:
        custom(kube_api).patch_namespaced_custom_object(
            GROUP, VERSION, ns, CDI, it, {"metadata": {"annotations": {"cdi.ingest.dev/sync-now": value}}}
        )

    def wait_told(expected: list[str]) -> None:
        wait_until(lambda: told() == expected or None, 30, f"the alerts {expected}", details=operator.log_tail)

    first = finished_run(None)  # the sync-now of create_objects: five rows
    assert (first["result"], first["rowsSynced"]) == ("Success", 5), first
    wait_told(["Succeeded"])

    sync_now("no-changes")
    second = finished_run(first["startedAt"])
    assert (second["result"], second["rowsSynced"], second["rowsFailed"]) == ("Success", 0, 0), second
    wait_told(["Succeeded", "Succeeded, NoChanges"])

    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=30)
    rows = [(base, "user-a", '{"plan": "a"}'), (base, "user-b", '{"plan": "b"}'), (base, "user-c", "not json")]
    sql(pg_settings, f'INSERT INTO "{pg_schema}".users VALUES (%s, %s, %s)', rows)
    sync_now("row-errors")
    third = finished_run(second["startedAt"])
    assert (third["result"], third["rowsSynced"], third["rowsFailed"]) == ("Partial", 2, 1), third
    wait_told(["Succeeded", "Succeeded, NoChanges", "RowErrorRate, Succeeded"])
    mail = [m for m in mailbox.received() if f"{ns}/{it}:" in str(m["Subject"])][-1]
    assert "33.3% row errors, above 10%" in str(mail["Subject"]), mail["Subject"]
    assert "INVALID_PAYLOAD_JSON" in mail.get_content()

    time.sleep(5)  # resyncs tell nothing again
    assert len(told()) == 3, told()
    assert len((get(kube_api, CDI, ns, it) or {})["status"]["notifiedRuns"]) >= 3


def samples_after(operator: MetricsOperator, key: tuple[str, frozenset[tuple[str, str]]]) -> float:
    return _scrape_or_none(operator).get(key, 0.0)


def _scrape_or_none(operator: MetricsOperator) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    try:
        return operator.scrape()
    except OSError:
        return {}
