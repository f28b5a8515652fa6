"""The reconciler tier: both reconcilers, every branch, against the in-memory KubeApi (fake_kube.py).

Warehouses are real: a DuckDB file per test (the connection test of an integration runs for real). Snowflake's
login is the one stand-in (`SnowflakeLogins`): it accepts a key only once its ALTER USER statement was "run", which
is what a key rotation depends on and what fakesnow (which takes any key) cannot show.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import duckdb
import pytest
from aiosmtpd.controller import Controller
from fake_kube import FakeKube

from cdi_operator.api import reasons, snowflake_key
from cdi_operator.api.json import JSON
from cdi_operator.api.models import CDI_PLURAL, WHC_PLURAL, WarehouseCredentialSpec
from cdi_operator.controller import conditions, connection, snowflake_keys
from cdi_operator.controller.credential import IN_USE_FINALIZER, CredentialReconciler
from cdi_operator.controller.integration import IntegrationReconciler, cronjob_name
from cdi_operator.controller.observability import Observer
from cdi_operator.controller.settings import OperatorSettings

NS = "data"
SETTINGS = OperatorSettings(runner_image="cdi:test", connection_test_timeout=30)
SYNC_NOW = "cdi.ingest.dev/sync-now"
TEST_CONNECTION = "cdi.ingest.dev/test-connection"
ROTATE_KEY = "cdi.ingest.dev/rotate-key"


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    found = conditions.find(status.get("conditions"), type_)
    assert found is not None, f"no {type_} condition in {status.get('conditions')}"
    return found


@dataclass
class World:
    """A namespace with a DuckDB warehouse file, the fake API, and the two reconcilers on it."""

    kube: FakeKube
    duckdb_path: Path
    settings: OperatorSettings = SETTINGS
    logins: SnowflakeLogins = field(default_factory=lambda: SnowflakeLogins())

    def credential(self, name: str = "wh", spec: dict[str, Any] | None = None, **meta: Any) -> None:
        body = spec if spec is not None else {"type": "duckdb", "duckdb": {"path": str(self.duckdb_path)}}
        self.kube.add(
            WHC_PLURAL,
            {"kind": "WarehouseCredential", "metadata": {"name": name, "namespace": NS, **meta}, "spec": body},
        )

    def integration(self, name: str = "users", created: str = "2026-01-01T00:00:00Z", **spec: Any) -> None:
        body = {
            "credentialRef": {"name": "wh"},
            "source": {"table": "users"},
            "dataType": "customAttributes",
            "schedule": "0 3 * * *",
            **spec,
        }
        meta = {"name": name, "namespace": NS, "creationTimestamp": created}
        self.kube.add(CDI_PLURAL, {"kind": "CdiIntegration", "metadata": meta, "spec": body})

    def integrations(self, observer: Observer | None = None) -> IntegrationReconciler:
        return IntegrationReconciler(self.kube, self.settings, observer)

    def credentials(self) -> CredentialReconciler:
        return CredentialReconciler(self.kube, self.settings, check=self.logins.check)

    def status(self, name: str = "users") -> dict[str, Any]:
        return self.kube.status(CDI_PLURAL, NS, name)

    def credential_status(self, name: str = "wh") -> dict[str, Any]:
        return self.kube.status(WHC_PLURAL, NS, name)


class SnowflakeLogins:
    """Snowflake's key-pair login as far as the operator can tell: a key logs in once its public half was set on the
    user with the ALTER USER statement the operator showed (`run`). Other warehouses go to the real check."""

    def __init__(self) -> None:
        self.public_keys: set[str] = set()

    def run(self, statement: str) -> None:
        match = re.fullmatch(r"ALTER USER \S+ SET RSA_PUBLIC_KEY(?:_2)?='([A-Za-z0-9+/=]+)'", statement)
        assert match, statement
        self.public_keys.add(match.group(1))

    def check(self, spec: WarehouseCredentialSpec, secrets: Mapping[tuple[str, str], str]) -> connection.Outcome:
        if spec.snowflake is None:
            return connection.check_credential(spec, secrets)
        ref = spec.snowflake.private_key_secret_ref
        assert ref is not None
        pem = secrets.get((ref.name, ref.key))
        if pem is not None and snowflake_keys.public_key(pem) in self.public_keys:
            return connection.Outcome(connection.PASSED, connection.PASSED, "logged in")
        return connection.Outcome(connection.FAILED, reasons.FailureReason.AUTH_FAILED, "JWT token is invalid")


@pytest.fixture
def world(tmp_path: Path) -> World:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE users (EXTERNAL_ID VARCHAR, UPDATED_AT TIMESTAMP, PAYLOAD VARCHAR)")
        con.execute("INSERT INTO users VALUES ('u1', TIMESTAMP '2026-01-01 00:00:00', '{\"plan\": \"gold\"}')")
        con.execute("CREATE TABLE no_updated_at (EXTERNAL_ID VARCHAR, PAYLOAD VARCHAR)")
    return World(FakeKube(), path)


# --- CdiIntegration: the phase each situation leads to ---------------------------------------------------------


@dataclass(frozen=True)
class IntegrationCase:
    id: str
    setup: Callable[[World], None]
    phase: str
    reason: str  # of Ready
    events: tuple[str, ...]


def _active(w: World) -> None:
    w.credential()
    w.integration()


def _suspended(w: World) -> None:
    w.credential()
    w.integration(suspend=True)


def _invalid_spec(w: World) -> None:
    w.credential()
    w.integration(schedule="* * * * *")


def _credential_missing(w: World) -> None:
    w.integration()


def _credential_invalid(w: World) -> None:
    w.credential(spec={"type": "duckdb"})
    w.integration()


def _invalid_source(w: World) -> None:
    w.credential()
    w.integration(source={"table": "users", "project": "p"})


def _duplicate_table(w: World) -> None:
    w.credential()
    w.integration("older", created="2025-01-01T00:00:00Z")
    w.integration()


def _table_missing(w: World) -> None:
    w.credential()
    w.integration(source={"table": "nope"})


def _column_missing(w: World) -> None:
    w.credential()
    w.integration(source={"table": "no_updated_at"})


def _database_missing(w: World) -> None:
    w.credential(spec={"type": "duckdb", "duckdb": {"path": str(w.duckdb_path) + ".gone"}})
    w.integration()


INTEGRATION_CASES = [
    IntegrationCase("active", _active, "Active", "Active", (reasons.CONNECTION_TEST_PASSED, "Active")),
    IntegrationCase("suspended", _suspended, "Suspended", "Suspended", (reasons.CONNECTION_TEST_PASSED, "Suspended")),
    IntegrationCase("invalid-spec", _invalid_spec, "Failed", reasons.INVALID_SPEC, (reasons.INVALID_SPEC,)),
    IntegrationCase(
        "credential-missing",
        _credential_missing,
        "Draft",
        reasons.CREDENTIAL_NOT_FOUND,
        (reasons.CREDENTIAL_NOT_FOUND,),
    ),
    IntegrationCase(
        "credential-invalid", _credential_invalid, "Draft", reasons.CREDENTIAL_INVALID, (reasons.CREDENTIAL_INVALID,)
    ),
    IntegrationCase("invalid-source", _invalid_source, "Draft", reasons.INVALID_SOURCE, (reasons.INVALID_SOURCE,)),
    IntegrationCase("duplicate-table", _duplicate_table, "Draft", reasons.DUPLICATE_TABLE, (reasons.DUPLICATE_TABLE,)),
    IntegrationCase(
        "table-missing", _table_missing, "Draft", reasons.FailureReason.TABLE_MISSING, (reasons.CONNECTION_TEST_FAILED,)
    ),
    IntegrationCase(
        "column-missing",
        _column_missing,
        "Draft",
        reasons.FailureReason.COLUMN_MISSING,
        (reasons.CONNECTION_TEST_FAILED,),
    ),
    IntegrationCase(
        "database-missing",
        _database_missing,
        "Draft",
        reasons.FailureReason.DATABASE_MISSING,
        (reasons.CONNECTION_TEST_FAILED,),
    ),
]


@pytest.mark.parametrize("case", INTEGRATION_CASES, ids=lambda c: c.id)
async def test_integration_phase(world: World, case: IntegrationCase) -> None:
    case.setup(world)
    reconciler = world.integrations()

    await reconciler.reconcile(NS, "users")

    status = world.status()
    assert status["phase"] == case.phase
    assert status["observedGeneration"] == 1
    tested = reasons.CONNECTION_TEST_PASSED in case.events or reasons.CONNECTION_TEST_FAILED in case.events
    # One patch per reconcile; a connection test shows "testing" first (it may take minutes).
    assert len(world.kube.writes_of("patch_status")) == (2 if tested else 1)
    live = case.phase in ("Active", "Suspended")
    ready = condition(status, reasons.READY)
    assert (ready["status"], ready["reason"]) == ("True" if live else "False", case.reason)
    assert condition(status, reasons.STALLED)["status"] == ("False" if live else "True")
    assert [e.reason for e in world.kube.events if e.name == "users"] == list(case.events)
    cronjob = world.kube.cronjobs.get((NS, cronjob_name("users")))
    if live:
        assert cronjob is not None and cronjob["spec"]["suspend"] is (case.phase == "Suspended")
        assert condition(status, reasons.CONNECTION_VERIFIED)["status"] == "True"
        assert status["connectionTest"]["result"] == "Passed" and status["connectionTest"]["preview"]
        assert IN_USE_FINALIZER in world.kube.obj(WHC_PLURAL, NS, "wh")["metadata"]["finalizers"]
        kinds = sorted(kind for kind, _, _ in world.kube.runner_access)
        assert kinds == ["Lease", "Role", "RoleBinding", "ServiceAccount"]  # the Lease: the runs' claim
    else:
        assert cronjob is None
        assert not world.kube.runner_access

    # Level-triggered: the same state again writes nothing and tells nothing.
    writes, events = len(world.kube.writes_of("patch_status")), len(world.kube.events)
    await reconciler.reconcile(NS, "users")
    assert len(world.kube.writes_of("patch_status")) == writes
    assert len(world.kube.events) == events


async def test_connection_test_writes_testing_first_then_the_outcome(world: World) -> None:
    _active(world)

    await world.integrations().reconcile(NS, "users")

    patches = [w.body for w in world.kube.writes_of("patch_status")]
    assert patches[0]["connectionTest"]["result"] == "Testing"
    assert condition(patches[0], reasons.RECONCILING)["status"] == "True"
    assert len(patches) == 2  # "testing" (a test may take minutes), then the outcome and the phase together


async def test_operator_service_account_setting_makes_no_runner_access(world: World) -> None:
    _active(world)
    world.settings = OperatorSettings(runner_image="cdi:test", runner_service_account="shared-runner")

    await world.integrations().reconcile(NS, "users")

    assert world.status()["phase"] == "Active"
    assert [kind for kind, _, _ in world.kube.runner_access] == ["Lease"]  # the runs' claim, in both modes
    cronjob = world.kube.cronjobs[(NS, cronjob_name("users"))]
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == "shared-runner"


async def test_a_new_integration_asks_for_no_suspension_of_a_cronjob_it_cannot_have_yet(world: World) -> None:
    # 1,000 applied at once: a PATCH each before its connection test that can only be a 404
    _active(world)
    asked: list[str] = []
    suspend = world.kube.suspend_cronjob

    async def counted(namespace: str, name: str) -> bool:
        asked.append(name)
        return await suspend(namespace, name)

    world.kube.suspend_cronjob = counted  # type: ignore[method-assign]
    await world.integrations().reconcile(NS, "users")
    assert world.status()["phase"] == "Active" and asked == []


async def test_active_integration_whose_credential_goes_away_stops(world: World) -> None:
    _active(world)
    reconciler = world.integrations()
    await reconciler.reconcile(NS, "users")
    del world.kube.objects[(WHC_PLURAL, NS, "wh")]

    await reconciler.reconcile(NS, "users")

    status = world.status()
    assert status["phase"] == "Draft"
    assert condition(status, reasons.STALLED)["reason"] == reasons.CREDENTIAL_NOT_FOUND
    assert world.kube.cronjobs[(NS, cronjob_name("users"))]["spec"]["suspend"] is True
    assert world.kube.reasons()[-1] == reasons.CREDENTIAL_NOT_FOUND


async def test_suspend_and_resume(world: World) -> None:
    _active(world)
    reconciler = world.integrations()
    await reconciler.reconcile(NS, "users")

    world.kube.update_spec(CDI_PLURAL, NS, "users", {"suspend": True})
    await reconciler.reconcile(NS, "users")
    assert world.status()["phase"] == "Suspended"
    assert world.status()["observedGeneration"] == 2
    assert world.kube.cronjobs[(NS, cronjob_name("users"))]["spec"]["suspend"] is True

    world.kube.update_spec(CDI_PLURAL, NS, "users", {"suspend": False})
    await reconciler.reconcile(NS, "users")
    assert world.status()["phase"] == "Active"
    assert world.kube.cronjobs[(NS, cronjob_name("users"))]["spec"]["suspend"] is False
    assert world.kube.reasons()[-2:] == ["Suspended", "Active"]


async def test_test_connection_annotation_retests_and_stays_active(world: World) -> None:
    _active(world)
    reconciler = world.integrations()
    await reconciler.reconcile(NS, "users")
    first = world.status()["connectionTest"]["time"]

    world.kube.annotate(CDI_PLURAL, NS, "users", **{TEST_CONNECTION: "again"})
    await reconciler.reconcile(NS, "users")

    status = world.status()
    assert status["lastHandledTestConnection"] == "again"
    assert status["phase"] == "Active" and status["connectionTest"]["time"] >= first
    testing = world.kube.writes_of("patch_status")[-2].body
    assert "phase" not in testing, "a re-test of a live integration keeps it Active"
    assert world.kube.reasons()[-1] == reasons.CONNECTION_TEST_PASSED


async def test_deleted_integration_is_left_alone(world: World) -> None:
    await world.integrations().reconcile(NS, "users")  # never existed
    _active(world)
    world.kube.objects[(CDI_PLURAL, NS, "users")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    await world.integrations().reconcile(NS, "users")

    assert not world.kube.writes and not world.kube.events


# --- sync-now -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncNowCase:
    id: str
    setup: Callable[[World], None]
    created: bool
    event: str | None  # the reason of the sync-now Event, None for none


def _unfinished_job(w: World) -> None:
    _active(w)
    w.kube.jobs[(NS, "users-29000000")] = {
        "metadata": {"name": "users-29000000", "namespace": NS, "labels": {"cdi.ingest.dev/integration": "users"}},
        "status": {"active": 1},
    }


def _finished_job(w: World) -> None:
    _active(w)
    w.kube.jobs[(NS, "users-29000000")] = {
        "metadata": {"name": "users-29000000", "namespace": NS, "labels": {"cdi.ingest.dev/integration": "users"}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T00:10:00Z"},
    }


def _running_without_job(w: World) -> None:
    _active(w)
    w.kube.objects[(CDI_PLURAL, NS, "users")]["status"] = {
        "lastSync": {"startedAt": "2026-01-01T00:00:00Z", "result": "Running", "trigger": "local"}
    }


def _already_handled(w: World) -> None:
    _active(w)
    w.kube.objects[(CDI_PLURAL, NS, "users")]["status"] = {"lastHandledSyncNow": "1"}


SYNC_NOW_CASES = [
    SyncNowCase("active-idle", _active, True, reasons.SYNC_NOW),
    SyncNowCase("after-a-finished-job", _finished_job, True, reasons.SYNC_NOW),
    SyncNowCase("busy-job", _unfinished_job, False, reasons.SYNC_NOW_REFUSED),
    SyncNowCase("busy-lastsync-running", _running_without_job, False, reasons.SYNC_NOW_REFUSED),
    SyncNowCase("not-active", _credential_missing, False, reasons.SYNC_NOW_REFUSED),
    SyncNowCase("suspended", _suspended, False, reasons.SYNC_NOW_REFUSED),
    SyncNowCase("same-value-again", _already_handled, False, None),
]


@pytest.mark.parametrize("case", SYNC_NOW_CASES, ids=lambda c: c.id)
async def test_sync_now(world: World, case: SyncNowCase) -> None:
    case.setup(world)
    world.kube.annotate(CDI_PLURAL, NS, "users", **{SYNC_NOW: "1"})

    await world.integrations().reconcile(NS, "users")

    created = [w.body for w in world.kube.writes_of("create_job")]
    assert len(created) == (1 if case.created else 0)
    if case.created:
        job = created[0]
        assert job["metadata"]["labels"]["cdi.ingest.dev/trigger"] == "syncNow"
        assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--trigger") + 1] == "syncNow"
    sync_now_events = [e.reason for e in world.kube.events if e.reason.startswith(reasons.SYNC_NOW)]
    assert sync_now_events == ([case.event] if case.event else [])
    assert world.status()["lastHandledSyncNow"] == "1"

    # Handled once per value.
    await world.integrations().reconcile(NS, "users")
    assert len(world.kube.writes_of("create_job")) == len(created)
    assert [e.reason for e in world.kube.events if e.reason.startswith(reasons.SYNC_NOW)] == sync_now_events


# --- rewind ---------------------------------------------------------------------------------------------------


REWIND = "cdi.ingest.dev/rewind"
WATERMARK = {"updatedAt": "2026-01-01T12:00:00Z"}


@dataclass(frozen=True)
class RewindCase:
    id: str
    setup: Callable[[World], None]
    value: str
    pending: dict[str, Any] | None  # status.pendingRewind afterwards
    event: str


def _synced(w: World) -> None:
    _active(w)
    w.kube.objects[(CDI_PLURAL, NS, "users")]["status"] = {"watermark": WATERMARK}


def _synced_and_busy(w: World) -> None:
    _unfinished_job(w)
    w.kube.objects[(CDI_PLURAL, NS, "users")]["status"] = {"watermark": WATERMARK}


REWIND_CASES = [
    RewindCase("full", _synced, "full", {"value": "full"}, reasons.REWIND),
    RewindCase(
        "to-a-time",
        _synced,
        "2026-01-01T10:00:00+02:00",
        {"value": "2026-01-01T10:00:00+02:00", "to": "2026-01-01T08:00:00+00:00"},
        reasons.REWIND,
    ),
    RewindCase("full-while-draft", _credential_missing, "full", {"value": "full"}, reasons.REWIND),
    RewindCase("busy-job", _synced_and_busy, "full", None, reasons.REWIND_REFUSED),
    RewindCase("not-a-time", _synced, "yesterday", None, reasons.REWIND_REFUSED),
    RewindCase("no-zone", _synced, "2026-01-01T10:00:00", None, reasons.REWIND_REFUSED),
    RewindCase("after-the-watermark", _synced, "2026-01-02T00:00:00Z", None, reasons.REWIND_REFUSED),
    RewindCase("a-time-without-a-watermark", _active, "2026-01-01T00:00:00Z", None, reasons.REWIND_REFUSED),
]


@pytest.mark.parametrize("case", REWIND_CASES, ids=lambda c: c.id)
async def test_rewind(world: World, case: RewindCase) -> None:
    case.setup(world)
    world.kube.annotate(CDI_PLURAL, NS, "users", **{REWIND: case.value})

    await world.integrations().reconcile(NS, "users")

    status = world.status()
    assert status["lastHandledRewind"] == case.value
    assert status.get("pendingRewind") == case.pending
    rewind_events = [e for e in world.kube.events if e.reason.startswith(reasons.REWIND)]
    assert [e.reason for e in rewind_events] == [case.event]
    assert case.value in rewind_events[0].message

    # Handled once per value.
    await world.integrations().reconcile(NS, "users")
    assert len([e for e in world.kube.events if e.reason.startswith(reasons.REWIND)]) == 1


# --- a run stopped at its Job's deadline -------------------------------------------------------------------------


def _stopped_at_its_deadline(world: World, running: JSON) -> None:
    """Job users-29000000, stopped by its activeDeadlineSeconds at 04:00 while its run `running` was in lastSync."""
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["lastSync"] = running
    stopped = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}
    world.kube.jobs[(NS, "users-29000000")] = {
        "metadata": {"name": "users-29000000", "namespace": NS, "labels": {"cdi.ingest.dev/integration": "users"}},
        "spec": {"activeDeadlineSeconds": 3600},
        "status": {
            "startTime": "2026-01-01T03:00:00Z",
            "conditions": [{**stopped, "lastTransitionTime": "2026-01-01T04:00:00Z"}],
        },
    }


async def test_a_run_stopped_at_its_deadline_is_recorded_once_as_deadline_exceeded(world: World) -> None:
    _active(world)
    reconciler = world.integrations(Observer(env={}))
    await reconciler.reconcile(NS, "users")
    running = {"trigger": "schedule", "job": "users-29000000", "startedAt": "2026-01-01T03:00:05Z", "result": "Running"}
    _stopped_at_its_deadline(world, running)
    events = len(world.kube.events)

    await reconciler.reconcile(NS, "users")

    status = world.status()
    last = status["lastSync"]
    assert (last["result"], last["finishedAt"], last["startedAt"]) == (
        "Error",
        "2026-01-01T04:00:00+00:00",
        running["startedAt"],
    )
    assert last["message"].startswith("DeadlineExceeded: ") and "timeoutSeconds=3600" in last["message"]
    assert status["runs"] == [last]
    found = condition(status, reasons.SYNCED)
    assert (found["status"], found["reason"]) == ("False", reasons.DEADLINE_EXCEEDED)
    assert [e.reason for e in world.kube.events[events:]] == [reasons.DEADLINE_EXCEEDED]

    await reconciler.reconcile(NS, "users")  # recorded once
    assert world.status()["lastSync"] == last and len(world.kube.events) == events + 1


async def test_a_runner_record_written_while_the_deadline_is_recorded_is_kept(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the operator has read the status, a runner writes its record into status.runs (a Job skipped while
    the stopped run held the integration), then the operator writes the deadline's record. A merge patch replaces
    runs whole, so the operator's write is guarded by the resourceVersion it read: a conflict, a re-read, both kept."""
    _active(world)
    reconciler = world.integrations(Observer(env={}))
    await reconciler.reconcile(NS, "users")
    running = {
        "runId": "r-1",
        "trigger": "schedule",
        "job": "users-29000000",
        "startedAt": "2026-01-01T03:00:05Z",
        "result": "Running",
    }
    _stopped_at_its_deadline(world, running)
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["runs"] = [running]
    skipped = {
        "runId": "r-2",
        "trigger": "syncNow",
        "job": "users-now-1",
        "startedAt": "2026-01-01T03:30:00Z",
        "finishedAt": "2026-01-01T03:30:01Z",
        "result": "Skipped",
        "heldBy": "run r-1 (Job users-29000000)",
    }
    list_jobs = world.kube.list_jobs
    raced = []

    async def a_runner_writes_meanwhile(namespace: str, selector: str) -> list[JSON]:
        jobs = await list_jobs(namespace, selector)
        if not raced:  # as the runner's store does: merged into the runs it read, with that resourceVersion
            obj = world.kube.obj(CDI_PLURAL, NS, "users")
            runs = [skipped, *obj["status"]["runs"]]
            version = obj["metadata"]["resourceVersion"]
            raced.append(await world.kube.patch_status(CDI_PLURAL, NS, "users", {"runs": runs}, version))
        return jobs

    monkeypatch.setattr(world.kube, "list_jobs", a_runner_writes_meanwhile)
    await reconciler.reconcile(NS, "users")

    assert raced
    status = world.status()
    assert [(r["runId"], r["result"]) for r in status["runs"]] == [("r-2", "Skipped"), ("r-1", "Error")]
    assert status["lastSync"] == status["runs"][1] and status["lastSync"]["message"].startswith("DeadlineExceeded: ")


# --- finished runs: history, Synced, Events ------------------------------------------------------------------


RUN = {"runId": "r-1", "trigger": "schedule", "job": "users-1", "startedAt": "2026-01-01T03:00:00Z"}
FINISHED = "2026-01-01T03:01:00Z"


@pytest.mark.parametrize(
    ("record", "synced", "reason", "event"),
    [
        ({**RUN, "finishedAt": FINISHED, "result": "Success", "rowsSynced": 3}, "True", "Success", None),
        ({**RUN, "finishedAt": FINISHED, "result": "Partial", "rowsFailed": 1}, "True", "Partial", None),
        (
            {**RUN, "finishedAt": FINISHED, "result": "Error", "message": "TableMissing: gone"},
            "False",
            reasons.FailureReason.TABLE_MISSING,
            reasons.FailureReason.TABLE_MISSING,
        ),
        ({**RUN, "finishedAt": FINISHED, "result": "LimitExceeded"}, "False", "LimitExceeded", "LimitExceeded"),
        ({**RUN, "result": "Running"}, None, None, None),
        (
            {**RUN, "trigger": "syncNow", "finishedAt": FINISHED, "result": "Skipped", "heldBy": "run r-0"},
            None,
            None,
            reasons.SYNC_NOW_SKIPPED,
        ),
    ],
    ids=["success", "partial", "error", "limit", "running", "skipped-sync-now"],
)
async def test_finished_run(
    world: World, record: dict[str, Any], synced: str | None, reason: str | None, event: str | None
) -> None:
    _active(world)
    reconciler = world.integrations(Observer(env={}))
    await reconciler.reconcile(NS, "users")
    # What the runner writes: its record in status.runs, and in lastSync unless it was skipped.
    status = world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]
    status["runs"] = [record]
    if record["result"] != "Skipped":
        status["lastSync"] = record
    events, patches = len(world.kube.events), len(world.kube.writes_of("patch_status"))

    await reconciler.reconcile(NS, "users")

    # countedRuns, Synced and the e-mail key come in one patch (none while the run is still going).
    finished = "finishedAt" in record
    assert len(world.kube.writes_of("patch_status")) == patches + (1 if finished else 0)

    status = world.status()
    assert status.get("countedRuns", []) == (["r-1"] if finished else [])
    if synced is None:
        assert conditions.find(status.get("conditions"), reasons.SYNCED) is None
    else:
        found = condition(status, reasons.SYNCED)
        assert (found["status"], found["reason"]) == (synced, reason)
    assert [e.reason for e in world.kube.events[events:]] == ([event] if event else [])

    await reconciler.reconcile(NS, "users")  # counted once: no second Event, nothing written
    assert len(world.kube.events) == events + (1 if event else 0)
    assert world.status().get("countedRuns") == status.get("countedRuns")


# --- finished runs: the sync alerts of spec.notifications, e-mailed through a real SMTP server on loopback ---------


@dataclass
class Inbox:
    """aiosmtpd handler keeping each message received; `kinds` names them: the X-CDI-Alert rules, or "failure"."""

    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"

    def kinds(self) -> list[str]:
        return [str(m["X-CDI-Alert"] or "failure") for m in self.messages]


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _smtp_env(port: int) -> dict[str, str]:
    return {"CDI_SMTP_HOST": "127.0.0.1", "CDI_SMTP_PORT": str(port), "CDI_SMTP_STARTTLS": "false"}


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, dict[str, str]]]:
    # aiosmtpd logs each connection from its own thread, also after the test, into whatever handlers earlier tests
    # left on the root logger
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    inbox, port = Inbox(), _unused_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, _smtp_env(port)
    finally:
        controller.stop()


def _finished(result: str, synced: int = 0, failed: int = 0) -> JSON:
    return {
        "trigger": "schedule",
        "job": "users-1",
        "startedAt": "2026-01-01T03:00:00Z",
        "finishedAt": "2026-01-01T03:00:30Z",
        "result": result,
        "rowsRead": synced + failed,
        "rowsSynced": synced,
        "rowsFailed": failed,
        "message": "TableMissing: gone" if result == "Error" else "",
    }


@dataclass(frozen=True)
class AlertCase:
    id: str
    notifications: JSON
    last_sync: JSON
    told: list[str]


ALERT_CASES = [
    AlertCase("rate-fires", {"rowErrorRatePercent": 5}, _finished("Partial", 90, 10), [reasons.Alert.ROW_ERROR_RATE]),
    AlertCase("rate-quiet-below", {"rowErrorRatePercent": 5}, _finished("Partial", 97, 3), []),
    AlertCase("rate-off-by-default", {}, _finished("Partial", 1, 99), []),
    AlertCase("success-fires", {"onSuccess": True}, _finished("Success", 3), [reasons.Alert.SUCCEEDED]),
    AlertCase("success-off-by-default", {}, _finished("Success", 3), []),
    AlertCase("success-quiet-on-error", {"onSuccess": True}, _finished("Error"), ["failure"]),
    AlertCase("no-changes-fires", {"onSuccessWithoutChanges": True}, _finished("Success"), [reasons.Alert.NO_CHANGES]),
    AlertCase("no-changes-quiet-with-rows", {"onSuccessWithoutChanges": True}, _finished("Success", 2), []),
    AlertCase(
        "both-in-one-message",
        {"onSuccess": True, "onSuccessWithoutChanges": True},
        _finished("Success"),
        [f"{reasons.Alert.SUCCEEDED}, {reasons.Alert.NO_CHANGES}"],
    ),
    AlertCase("sync-error-on-by-default", {}, _finished("Error"), ["failure"]),
    AlertCase("sync-error-off", {"onSyncError": False}, _finished("Error"), []),
]


@pytest.mark.parametrize("case", ALERT_CASES, ids=[c.id for c in ALERT_CASES])
async def test_sync_alerts_fire_once_per_run(world: World, smtp: tuple[Inbox, dict[str, str]], case: AlertCase) -> None:
    inbox, env = smtp
    world.credential()
    world.integration(contactEmails=["ops@example.com"], notifications=case.notifications)
    reconciler = world.integrations(Observer(env=env))
    await reconciler.reconcile(NS, "users")
    assert inbox.kinds() == []
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["lastSync"] = case.last_sync

    await reconciler.reconcile(NS, "users")
    assert inbox.kinds() == case.told
    assert all(m["To"] == "ops@example.com" for m in inbox.messages)

    await reconciler.reconcile(NS, "users")  # a re-run of the reconcile
    await world.integrations(Observer(env=env)).reconcile(NS, "users")  # a restarted operator
    retry = {**case.last_sync, "startedAt": "2026-01-01T03:05:00Z", "finishedAt": "2026-01-01T03:05:30Z"}
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["lastSync"] = retry  # the Job's next pod
    await reconciler.reconcile(NS, "users")
    assert inbox.kinds() == case.told

    nxt = {**case.last_sync, "job": "users-2", "startedAt": "2026-01-02T03:00:00Z", "finishedAt": "2026-01-02T03:01Z"}
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["lastSync"] = nxt  # the next run is told again
    await reconciler.reconcile(NS, "users")
    expected_next = [k for k in case.told if k != "failure"]  # a failure that lasts is told once (observability)
    assert inbox.kinds() == case.told + expected_next


async def test_an_alert_the_smtp_server_refused_is_sent_once_it_accepts(
    world: World, smtp: tuple[Inbox, dict[str, str]]
) -> None:
    inbox, env = smtp
    world.credential()
    world.integration(contactEmails=["ops@example.com"], notifications={"onSuccess": True})
    await world.integrations(Observer(env={})).reconcile(NS, "users")
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["lastSync"] = _finished("Success", 3)
    await world.integrations(Observer(env=_smtp_env(_unused_port()))).reconcile(NS, "users")  # nobody listens
    assert "notifiedRuns" not in world.status()

    await world.integrations(Observer(env=env)).reconcile(NS, "users")
    assert inbox.kinds() == [reasons.Alert.SUCCEEDED]
    assert "Subject" in inbox.messages[0] and "synced 3 row(s)" in str(inbox.messages[0]["Subject"])


async def test_every_run_that_finished_while_the_operator_was_away_is_told(
    world: World, smtp: tuple[Inbox, dict[str, str]]
) -> None:
    inbox, env = smtp
    world.credential()
    world.integration(contactEmails=["ops@example.com"], notifications={"rowErrorRatePercent": 5, "onSuccess": True})
    reconciler = world.integrations(Observer(env=env))
    await reconciler.reconcile(NS, "users")
    first = {**_finished("Partial", 90, 10), "runId": "run-a"}
    second = {
        **_finished("Success", 4),
        "runId": "run-b",
        "job": "users-2",
        "startedAt": "2026-01-02T03:00:00Z",
        "finishedAt": "2026-01-02T03:00:30Z",
    }
    world.kube.objects[(CDI_PLURAL, NS, "users")]["status"]["runs"] = [second, first]  # newest first

    await reconciler.reconcile(NS, "users")
    await reconciler.reconcile(NS, "users")
    assert inbox.kinds() == [f"{reasons.Alert.ROW_ERROR_RATE}, {reasons.Alert.SUCCEEDED}", reasons.Alert.SUCCEEDED]
    assert {"run-a", "run-b"} <= set(world.status()["notifiedRuns"])


# --- WarehouseCredential ----------------------------------------------------------------------------------------


async def test_credential_passing_and_failing_tests(world: World) -> None:
    world.credential()
    world.credential("broken", {"type": "duckdb", "duckdb": {"path": str(world.duckdb_path) + ".gone"}})
    world.credential("bad", {"type": "duckdb"})
    reconciler = world.credentials()

    for name in ("wh", "broken", "bad"):
        await reconciler.reconcile(NS, name)

    patched = [w.what.rsplit("/", 1)[1] for w in world.kube.writes_of("patch_status")]
    assert patched == ["wh", "wh", "broken", "broken", "bad"]  # "testing", then the outcome; bad is never tested
    good = world.credential_status("wh")
    assert condition(good, reasons.READY)["reason"] == reasons.VERIFIED
    assert condition(good, reasons.CONNECTION_VERIFIED)["status"] == "True"
    assert good["connectionTest"]["result"] == "Passed"
    broken = world.credential_status("broken")
    assert (condition(broken, reasons.STALLED)["status"], condition(broken, reasons.STALLED)["reason"]) == (
        "True",
        reasons.FailureReason.DATABASE_MISSING,
    )
    bad = world.credential_status("bad")
    assert condition(bad, reasons.STALLED)["reason"] == reasons.INVALID_SPEC
    assert "spec" in condition(bad, reasons.READY)["message"]
    assert [(e.name, e.reason) for e in world.kube.events] == [
        ("wh", reasons.CONNECTION_TEST_PASSED),
        ("broken", reasons.CONNECTION_TEST_FAILED),
    ]

    writes = len(world.kube.writes)
    for name in ("wh", "broken", "bad"):
        await reconciler.reconcile(NS, name)
    assert len(world.kube.writes) == writes, "nothing changed: nothing written"


async def test_credential_in_use_finalizer_and_deletion(world: World) -> None:
    _active(world)
    await world.integrations().reconcile(NS, "users")
    credentials = world.credentials()
    await credentials.reconcile(NS, "wh")
    assert IN_USE_FINALIZER in world.kube.obj(WHC_PLURAL, NS, "wh")["metadata"]["finalizers"]

    world.kube.delete(WHC_PLURAL, NS, "wh")
    await credentials.reconcile(NS, "wh")
    status = world.credential_status()
    assert condition(status, reasons.READY)["reason"] == reasons.IN_USE
    assert "users" in condition(status, reasons.READY)["message"]
    assert world.kube.reasons()[-1] == reasons.DELETION_BLOCKED
    await credentials.reconcile(NS, "wh")
    assert world.kube.reasons().count(reasons.DELETION_BLOCKED) == 1

    del world.kube.objects[(CDI_PLURAL, NS, "users")]
    await credentials.reconcile(NS, "wh")
    assert (WHC_PLURAL, NS, "wh") not in world.kube.objects


async def test_credential_finalizer_removed_when_unused(world: World) -> None:
    world.credential(finalizers=[IN_USE_FINALIZER])

    await world.credentials().reconcile(NS, "wh")

    assert world.kube.obj(WHC_PLURAL, NS, "wh")["metadata"].get("finalizers") == []


# --- Snowflake key pairs ---------------------------------------------------------------------------------------


SNOWFLAKE = {"type": "snowflake", "snowflake": {"account": "org-acct", "user": "CDI", "role": "R", "warehouse": "W"}}
KEY_SECRET = snowflake_key.secret_name("wh")


async def test_key_pair_generated_then_verified_once_its_statement_runs(world: World) -> None:
    world.credential(spec=SNOWFLAKE)
    reconciler = world.credentials()

    await reconciler.reconcile(NS, "wh")

    status = world.credential_status()
    secret = world.kube.secrets[(NS, KEY_SECRET)]
    assert secret["ownerReferences"][0]["kind"] == "WarehouseCredential"
    assert status["keySlot"] == 1
    assert status["publicKey"] == snowflake_keys.public_key(secret["data"]["private-key"])
    assert status["alterUserStatement"].startswith('ALTER USER "CDI" SET RSA_PUBLIC_KEY=')
    assert world.kube.reasons() == [reasons.KEY_PAIR_GENERATED, reasons.CONNECTION_TEST_FAILED]
    assert condition(status, reasons.STALLED)["reason"] == reasons.FailureReason.AUTH_FAILED
    assert "PRIVATE KEY" not in repr(world.kube.writes) + repr(world.kube.events)

    world.logins.run(status["alterUserStatement"])
    world.kube.annotate(WHC_PLURAL, NS, "wh", **{TEST_CONNECTION: "1"})
    await reconciler.reconcile(NS, "wh")
    status = world.credential_status()
    assert condition(status, reasons.READY)["status"] == "True"
    assert status["lastHandledTestConnection"] == "1"


async def _verified_snowflake(world: World) -> CredentialReconciler:
    world.credential(spec=SNOWFLAKE)
    reconciler = world.credentials()
    await reconciler.reconcile(NS, "wh")
    world.logins.run(world.credential_status()["alterUserStatement"])
    world.kube.annotate(WHC_PLURAL, NS, "wh", **{TEST_CONNECTION: "0"})
    await reconciler.reconcile(NS, "wh")
    assert condition(world.credential_status(), reasons.READY)["status"] == "True"
    return reconciler


async def test_key_rotation_through_its_states(world: World) -> None:
    reconciler = await _verified_snowflake(world)
    old_key = world.kube.secrets[(NS, KEY_SECRET)]["data"]["private-key"]

    # 1. rotate-key: a new key for slot 2, the old one stays active.
    world.kube.annotate(WHC_PLURAL, NS, "wh", **{ROTATE_KEY: "r1"})
    await reconciler.reconcile(NS, "wh")
    status = world.credential_status()
    rotation = status["rotation"]
    assert rotation["phase"] == snowflake_keys.PHASE_PENDING and rotation["nextKeySlot"] == 2
    assert rotation["statement"].startswith('ALTER USER "CDI" SET RSA_PUBLIC_KEY_2=')
    assert status["keySlot"] == 1 and status["lastHandledRotateKey"] == "r1"
    assert world.kube.secrets[(NS, KEY_SECRET)]["data"]["private-key"] == old_key
    assert world.kube.reasons()[-1] == reasons.KEY_ROTATION_STARTED

    # 2. Another value while pending: the pending key is kept.
    world.kube.annotate(WHC_PLURAL, NS, "wh", **{ROTATE_KEY: "r2"})
    await reconciler.reconcile(NS, "wh")
    assert world.credential_status()["rotation"]["nextPublicKey"] == rotation["nextPublicKey"]
    assert world.kube.reasons()[-1] == reasons.KEY_ROTATION_PENDING

    # 3. A test before the statement ran: the new key does not log in, the rotation waits, syncs go on.
    world.kube.annotate(WHC_PLURAL, NS, "wh", **{TEST_CONNECTION: "1"})
    await reconciler.reconcile(NS, "wh")
    status = world.credential_status()
    assert status["rotation"]["phase"] == snowflake_keys.PHASE_PENDING
    assert "a login with the new key failed (AuthFailed)" in status["rotation"]["message"]
    assert condition(status, reasons.READY)["status"] == "True"

    # 4. The statement ran: the next test switches keys; status shows the statement retiring slot 1.
    world.logins.run(rotation["statement"])
    world.kube.annotate(WHC_PLURAL, NS, "wh", **{TEST_CONNECTION: "2"})
    events = len(world.kube.events)
    await reconciler.reconcile(NS, "wh")
    status = world.credential_status()
    assert status["keySlot"] == 2
    assert status["rotation"]["phase"] == snowflake_keys.PHASE_COMPLETED
    assert status["rotation"]["statement"] == 'ALTER USER "CDI" UNSET RSA_PUBLIC_KEY'
    assert "nextPublicKey" not in status["rotation"]
    assert world.kube.secrets[(NS, KEY_SECRET)]["data"]["private-key"] != old_key
    assert world.kube.reasons()[events:] == [reasons.KEY_ROTATED, reasons.CONNECTION_TEST_PASSED]
    assert condition(status, reasons.READY)["status"] == "True"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ({"data": {"private-key": "x"}, "ownerReferences": []}, reasons.KEY_SECRET_CONFLICT),
        ({"data": {}, "ownerReferences": "owned"}, reasons.KEY_SECRET_INVALID),
    ],
    ids=["not-owned", "no-key"],
)
async def test_unusable_key_secret(world: World, secret: dict[str, Any], reason: str) -> None:
    world.credential(spec=SNOWFLAKE)
    uid = world.kube.obj(WHC_PLURAL, NS, "wh")["metadata"]["uid"]
    owners = [{"uid": uid, "kind": "WarehouseCredential"}] if secret["ownerReferences"] == "owned" else []
    world.kube.add_secret(NS, KEY_SECRET, secret["data"], ownerReferences=owners)

    await world.credentials().reconcile(NS, "wh")

    status = world.credential_status()
    assert condition(status, reasons.STALLED)["reason"] == reason
    assert condition(status, reasons.CONNECTION_VERIFIED)["status"] == "Unknown"
    assert world.kube.reasons() == [reason]
    assert "connectionTest" not in status


async def test_rotate_key_on_a_credential_with_its_own_key_is_ignored(world: World) -> None:
    own = {**SNOWFLAKE, "snowflake": {**SNOWFLAKE["snowflake"], "privateKeySecretRef": {"name": "k", "key": "pem"}}}
    world.credential(spec=own, annotations={ROTATE_KEY: "r1"})

    await world.credentials().reconcile(NS, "wh")

    assert world.credential_status()["lastHandledRotateKey"] == "r1"
    assert world.kube.reasons()[0] == reasons.KEY_ROTATION_IGNORED
    assert (NS, KEY_SECRET) not in world.kube.secrets


async def test_two_credentials_for_one_snowflake_user_are_flagged(world: World) -> None:
    world.credential(spec=SNOWFLAKE)
    world.credential("wh2", spec=SNOWFLAKE)

    await world.credentials().reconcile(NS, "wh")

    found = condition(world.credential_status(), reasons.KEY_CONFLICT)
    assert (found["status"], found["reason"]) == ("True", reasons.SAME_SNOWFLAKE_USER)
    assert "wh2" in found["message"]
    assert reasons.KEY_CONFLICT in world.kube.reasons()


async def test_one_snowflake_user_for_several_braze_workspaces_is_flagged(world: World) -> None:
    """Braze refuses one Snowflake user for several workspaces, whichever credential for that user they go through."""
    world.credential(spec=SNOWFLAKE)
    world.credential("wh2", spec=SNOWFLAKE)
    eu = {"restEndpoint": "https://rest.fra-01.braze.eu", "apiKeySecretRef": {"name": "braze-eu", "key": "api-key"}}
    world.integration("us")
    world.integration("eu", credentialRef={"name": "wh2"}, source={"table": "other"}, braze=eu)

    await world.credentials().reconcile(NS, "wh")

    found = condition(world.credential_status(), reasons.WORKSPACE_CONFLICT)
    assert (found["status"], found["reason"]) == ("True", reasons.SEVERAL_WORKSPACES)
    assert "eu to https://rest.fra-01.braze.eu with Secret braze-eu/api-key" in found["message"]
    assert "us to the runner's default endpoint" in found["message"]
    assert reasons.WORKSPACE_CONFLICT in world.kube.reasons()

    world.kube.delete(CDI_PLURAL, NS, "eu")
    await world.credentials().reconcile(NS, "wh")
    found = condition(world.credential_status(), reasons.WORKSPACE_CONFLICT)
    assert (found["status"], found["reason"]) == ("False", reasons.ONE_WORKSPACE)
