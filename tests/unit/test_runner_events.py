"""The operator skips the watch events that only a running sync's progress made (controller/runner_writes.py), and
reconciles those a run's start or end made: the runner's real status writes (runner/status_store.py) on the
in-memory API (fake_kube.py), each object version handed to the Controller as kopf hands it a watch event.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from fake_kube import FakeKube, merge_patch

from cdi_operator.api import reasons
from cdi_operator.api.json import JSON
from cdi_operator.api.models import CDI_PLURAL, WHC_PLURAL, RunResult, RunSummary, Watermark
from cdi_operator.controller import conditions
from cdi_operator.controller.main import Controller, NoDiffBase, build_registry, kopf_settings
from cdi_operator.controller.runner_writes import decisive
from cdi_operator.controller.settings import OperatorSettings
from cdi_operator.kube import Conflict, Forbidden, KubeError, Unanswered
from cdi_operator.runner.state import CheckpointDeferred
from cdi_operator.runner.status_store import CrStatusStore, WatermarkMoved

NS = "data"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class RunnerKube:
    """The two calls CrStatusStore makes (kube.client.Kube's), on the fake's objects."""

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake

    def get_custom(self, plural: str, namespace: str, name: str) -> JSON:
        return self.fake.obj(plural, namespace, name)

    def patch_status(self, plural: str, namespace: str, name: str, patch: JSON, resource_version: str | None) -> JSON:
        obj = self.fake.objects[(plural, namespace, name)]
        if resource_version is not None and obj["metadata"]["resourceVersion"] != resource_version:
            raise Conflict(409, "the object has been modified")
        obj["status"] = merge_patch(obj.get("status"), patch)
        obj["metadata"]["resourceVersion"] = self.fake._version()
        return copy.deepcopy(obj)


class Watched:
    """The Controller with a count of its reconciles; `event()` hands it the object as it is now."""

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.controller = Controller(OperatorSettings(runner_image="cdi:test", connection_test_timeout=30), fake)
        self.reconciles = 0
        reconcile = self.controller.integrations.reconcile

        async def counted(namespace: str, name: str) -> None:
            self.reconciles += 1
            await reconcile(namespace, name)

        self.controller.integrations.reconcile = counted  # type: ignore[method-assign]

    async def event(self, event_type: str = "MODIFIED") -> int:
        """The reconciles this event caused, with those of the events its own status writes made (as many as the
        watch would bring, until one changes nothing)."""
        before = self.reconciles
        for _ in range(5):
            seen = self.reconciles
            await self.controller.integration_event(event_type, NS, "users", self.fake.obj(CDI_PLURAL, NS, "users"))
            await self.controller.settled()
            if self.reconciles == seen:
                break
        return self.reconciles - before


@pytest.fixture
def fake(tmp_path: Path) -> FakeKube:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE users (EXTERNAL_ID VARCHAR, UPDATED_AT TIMESTAMP, PAYLOAD VARCHAR)")
    kube = FakeKube()
    kube.add(
        WHC_PLURAL,
        {"metadata": {"name": "wh", "namespace": NS}, "spec": {"type": "duckdb", "duckdb": {"path": str(path)}}},
    )
    spec = {
        "credentialRef": {"name": "wh"},
        "source": {"table": "users"},
        "dataType": "customAttributes",
        "schedule": "0 3 * * *",
    }
    kube.add(CDI_PLURAL, {"metadata": {"name": "users", "namespace": NS}, "spec": spec})
    return kube


def watermark(seconds: int) -> Watermark:
    return Watermark.model_validate({"updatedAt": (T0 + timedelta(seconds=seconds)).isoformat()})


def gauge(watched: Watched) -> float:
    return float(watched.controller.observer.metrics.watermark.labels(NS, "users")._value.get())  # type: ignore[attr-defined]


async def test_checkpoints_are_not_reconciled_a_finished_run_is(fake: FakeKube) -> None:
    watched = Watched(fake)
    assert await watched.event("ADDED") >= 1
    assert fake.status(CDI_PLURAL, NS, "users")["phase"] == "Active"
    store = CrStatusStore(RunnerKube(fake), NS, "users", job="users-1", run_id="r-1", pod="users-1-x")  # type: ignore[arg-type]

    store.mark_running(RunSummary(trigger="schedule", started_at=T0, result=RunResult.RUNNING))
    assert await watched.event() >= 1, "a run that starts is reconciled"
    store.load_watermark()

    calls = len(fake.writes)
    for second in range(1, 6):  # checkpoints: only status.watermark changes
        store.save_watermark(watermark(second))
        assert await watched.event() == 0
    assert len(fake.writes) == calls, "no API call for a checkpoint"
    assert gauge(watched) == (T0 + timedelta(seconds=5)).timestamp(), "the watermark gauge follows all the same"

    # a progress-only change of the Running record (its counts) is skipped too; its result is not
    status = fake.objects[(CDI_PLURAL, NS, "users")]["status"]
    status["lastSync"] = {**status["lastSync"], "rowsSynced": 1000}
    status["runs"] = [{**status["runs"][0], "rowsSynced": 1000}]
    assert await watched.event() == 0

    finished = RunSummary(
        trigger="schedule",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=6),
        result=RunResult.SUCCESS,
        rows_read=5,
        rows_synced=5,
        watermark=T0 + timedelta(seconds=5),
    )
    store.record_run(finished)
    assert await watched.event() >= 1, "a run that finished is reconciled"
    status = fake.status(CDI_PLURAL, NS, "users")
    assert status["countedRuns"] == ["r-1"]
    synced = conditions.find(status.get("conditions"), reasons.SYNCED)
    assert synced is not None and synced["status"] == "True", status.get("conditions")

    fake.annotate(CDI_PLURAL, NS, "users", **{"cdi.ingest.dev/sync-now": "1"})
    assert await watched.event() >= 1, "anything but the runner's progress is reconciled"
    last = fake.obj(CDI_PLURAL, NS, "users")
    before = watched.reconciles
    await watched.controller.integration_event("DELETED", NS, "users", last)
    assert watched.reconciles == before + 1, "a deletion is always reconciled"


async def test_a_failed_reconcile_is_retried_on_the_next_event(fake: FakeKube) -> None:
    watched = Watched(fake)
    broken = watched.controller.integrations.reconcile

    async def failing(namespace: str, name: str) -> None:
        await broken(namespace, name)
        raise RuntimeError("the API server went away")

    watched.controller.integrations.reconcile = failing  # type: ignore[method-assign]
    body = fake.obj(CDI_PLURAL, NS, "users")
    await watched.controller.integration_event("ADDED", NS, "users", body)
    await watched.controller.settled()
    watched.controller.integrations.reconcile = broken  # type: ignore[method-assign]
    before = watched.reconciles
    await watched.controller.integration_event("MODIFIED", NS, "users", body)
    await watched.controller.settled()
    assert watched.reconciles == before + 1, "the same object is reconciled again after a failure"


def test_the_digest_keeps_identity_and_result_of_a_running_record() -> None:
    running: dict[str, Any] = {"runId": "r-1", "result": "Running", "startedAt": "2026-01-01T00:00:00Z"}
    body = {"metadata": {"name": "users", "resourceVersion": "1"}, "status": {"runs": [running], "lastSync": running}}
    progressed = copy.deepcopy(body)
    progressed["metadata"]["resourceVersion"] = "2"
    progressed["status"]["watermark"] = {"updatedAt": "2026-01-01T00:00:05Z"}
    progressed["status"]["runs"][0]["rowsSynced"] = 7
    assert decisive(progressed) == decisive(body)
    done = copy.deepcopy(progressed)
    done["status"]["runs"][0]["result"] = "Success"
    assert decisive(done) != decisive(body)
    counted = copy.deepcopy(done)
    counted["status"]["runs"][0]["rowsSynced"] = 8
    assert decisive(counted) != decisive(done), "a finished record's counts are not progress"


class OverloadedKube(RunnerKube):
    """Status patches fail with `error` (after kube.client.Kube's own retries, as the runner would see them)."""

    def __init__(self, fake: FakeKube, error: KubeError) -> None:
        super().__init__(fake)
        self.error = error

    def patch_status(self, plural: str, namespace: str, name: str, patch: JSON, resource_version: str | None) -> JSON:
        raise self.error


@pytest.mark.parametrize("status", [429, 503, 504, None])
def test_a_checkpoint_the_api_server_is_too_busy_for_is_deferred(fake: FakeKube, status: int | None) -> None:
    error = KubeError(status, "HTTP 429") if status is not None else Unanswered(None, "no answer from the API server")
    store = CrStatusStore(OverloadedKube(fake, error), NS, "users")  # type: ignore[arg-type]
    with pytest.raises(CheckpointDeferred):
        store.save_watermark(watermark(1))


@pytest.mark.parametrize("error", [Forbidden(403, "forbidden (HTTP 403)"), KubeError(422, "HTTP 422 Unprocessable")])
def test_a_checkpoint_the_api_server_refuses_is_not_deferred(fake: FakeKube, error: KubeError) -> None:
    store = CrStatusStore(OverloadedKube(fake, error), NS, "users")  # type: ignore[arg-type]
    with pytest.raises(KubeError) as raised:
        store.save_watermark(watermark(1))
    assert raised.value is error


class LosingKube(RunnerKube):
    """Applies the next `lose` status patches and then fails them with `error`, as an overloaded API server that
    wrote to etcd but whose answer never came (a timeout, a reset, a 504)."""

    def __init__(self, fake: FakeKube, error: KubeError, lose: int) -> None:
        super().__init__(fake)
        self.error = error
        self.lose = lose

    def patch_status(self, plural: str, namespace: str, name: str, patch: JSON, resource_version: str | None) -> JSON:
        obj = super().patch_status(plural, namespace, name, patch, resource_version)
        if self.lose:
            self.lose -= 1
            raise self.error
        return obj


@pytest.mark.parametrize("error", [Unanswered(None, "no answer from the API server"), KubeError(504, "HTTP 504")])
@pytest.mark.parametrize("lose", [1, 2])
def test_a_checkpoint_applied_without_an_answer_does_not_stop_the_run(
    fake: FakeKube, error: KubeError, lose: int
) -> None:
    """The next checkpoint meets a 409 (its resourceVersion is older than the write that got no answer) and finds
    this run's own watermark, not another writer's: it goes on; a watermark someone else wrote is still refused."""
    store = CrStatusStore(LosingKube(fake, error, lose), NS, "users")  # type: ignore[arg-type]
    assert store.load_watermark() is None
    for second in range(1, lose + 1):
        with pytest.raises(CheckpointDeferred):
            store.save_watermark(watermark(second))
    assert Watermark.model_validate(fake.status(CDI_PLURAL, NS, "users")["watermark"]) == watermark(lose)

    store.save_watermark(watermark(10))
    assert Watermark.model_validate(fake.status(CDI_PLURAL, NS, "users")["watermark"]) == watermark(10)

    theirs = fake.objects[(CDI_PLURAL, NS, "users")]  # another writer's watermark, at a new resourceVersion
    theirs["status"]["watermark"] = watermark(1).model_dump(mode="json", by_alias=True)
    theirs["metadata"]["resourceVersion"] = fake._version()
    with pytest.raises(WatermarkMoved):
        store.save_watermark(watermark(11))


def test_a_watermark_another_writer_put_there_before_a_run_record_is_still_refused(fake: FakeKube) -> None:
    """The run's Running record meets a 409, re-reads and lands; the watermark it found there is not this run's."""
    store = CrStatusStore(RunnerKube(fake), NS, "users")  # type: ignore[arg-type]
    assert store.load_watermark() is None
    theirs = fake.objects[(CDI_PLURAL, NS, "users")]
    theirs.setdefault("status", {})["watermark"] = watermark(1).model_dump(mode="json", by_alias=True)
    theirs["metadata"]["resourceVersion"] = fake._version()
    store.mark_running(RunSummary(trigger="schedule", started_at=T0, result=RunResult.RUNNING))
    assert store.conflicts == 1
    with pytest.raises(WatermarkMoved):
        store.save_watermark(watermark(2))
    assert Watermark.model_validate(fake.status(CDI_PLURAL, NS, "users")["watermark"]) == watermark(1)


def test_the_operator_has_only_event_handlers_so_kopf_may_skip_its_diff_base(fake: FakeKube) -> None:
    """kopf_settings() gives kopf an empty diff base (main.NoDiffBase), which only on.event handlers allow: an
    on.update, on.field or daemon handler would see no change ever."""
    registry = build_registry(Watched(fake).controller)
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()
    assert sorted(h.fn.__name__ for h in registry._watching.get_all_handlers()) == [
        "credential_event",
        "integration_event",
    ]
    assert isinstance(kopf_settings().persistence.diffbase_storage, NoDiffBase)


async def test_events_that_come_during_a_reconcile_ask_for_one_more_and_kopf_never_waits(fake: FakeKube) -> None:
    """kopf hands the next event over while the integration is still being reconciled (its worker queues nothing);
    the changes those events bring are all reconciled, by one reconcile after the running one."""
    watched = Watched(fake)
    await watched.event("ADDED")
    release = asyncio.Event()
    reconcile = watched.controller.integrations.reconcile

    async def slow(namespace: str, name: str) -> None:
        await release.wait()
        await reconcile(namespace, name)

    watched.controller.integrations.reconcile = slow  # type: ignore[method-assign]
    before = watched.reconciles
    for value in ("1", "2", "3"):  # three changes the operator acts on, while the first reconcile waits
        fake.annotate(CDI_PLURAL, NS, "users", **{"cdi.ingest.dev/sync-now": value})
        await asyncio.wait_for(
            watched.controller.integration_event("MODIFIED", NS, "users", fake.obj(CDI_PLURAL, NS, "users")), 1
        )
    await asyncio.sleep(0)
    release.set()
    await watched.controller.settled()
    assert watched.reconciles - before == 2, "the running reconcile, then one for the changes that came meanwhile"


async def test_the_events_of_the_operators_own_status_writes_ask_for_no_reconcile(fake: FakeKube) -> None:
    """1,000 integrations applied at once: each is reconciled once to Active, not once more for the events of its
    "testing" and its Active writes (each a GET, a credential GET and a CronJob apply more)."""
    watched = Watched(fake)
    answers: list[JSON] = []
    patch_status = fake.patch_status

    async def answered(*args: Any, **kwargs: Any) -> JSON:
        answer = await patch_status(*args, **kwargs)
        answers.append(answer)
        return answer

    fake.patch_status = answered  # type: ignore[method-assign]
    await watched.controller.integration_event("ADDED", NS, "users", fake.obj(CDI_PLURAL, NS, "users"))
    await watched.controller.settled()
    assert watched.reconciles == 1 and fake.status(CDI_PLURAL, NS, "users")["phase"] == "Active"
    assert len(answers) == 2, "the testing status, then Active"
    for answer in answers:  # their watch events, as late as the watch likes
        await watched.controller.integration_event("MODIFIED", NS, "users", answer)
        await watched.controller.settled()
    assert watched.reconciles == 1
    fake.annotate(CDI_PLURAL, NS, "users", **{"cdi.ingest.dev/sync-now": "1"})
    assert await watched.event() >= 1, "a change by anyone else is reconciled"


async def test_a_change_made_while_the_operator_wrote_its_status_is_reconciled(fake: FakeKube) -> None:
    """The answer to the operator's write shows someone else's change made after the reconcile read the object: that
    write's event is not the operator's own, and the change is reconciled."""
    watched = Watched(fake)
    patch_status = fake.patch_status
    changed = False

    async def after_a_change(*args: Any, **kwargs: Any) -> JSON:
        nonlocal changed
        if not changed:  # a user's sync-now lands between the reconcile's GET and its first status write
            changed = True
            fake.annotate(CDI_PLURAL, NS, "users", **{"cdi.ingest.dev/sync-now": "1"})
        return await patch_status(*args, **kwargs)

    fake.patch_status = after_a_change  # type: ignore[method-assign]
    assert await watched.event("ADDED") == 2, "the first reconcile, then one for the sync-now in its answer"
    assert fake.obj(CDI_PLURAL, NS, "users")["status"]["lastHandledSyncNow"] == "1"
