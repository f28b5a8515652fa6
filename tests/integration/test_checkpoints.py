"""Checkpoints of a run: their interval grows with the run's age (runner/cadence.py), and a run that is stopped
(SIGTERM cancels it, runner/termination.py) saves what Braze acknowledged before it ends, whatever the interval.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sources import ATTRIBUTE_COLUMNS, BRAZE_KEY, Source, at, user_row

from cdi_operator.api.models import RunResult, RunSummary, Watermark
from cdi_operator.braze.client import BrazeClient
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.commands.common import braze_settings, open_warehouse
from cdi_operator.commands.manifests import load_manifests
from cdi_operator.runner import sync
from cdi_operator.runner.cadence import MOST_SECONDS, checkpoint_interval
from cdi_operator.runner.state import CheckpointDeferred, JsonFileStore
from cdi_operator.runner.sync import SyncJob, run_sync

ROWS = 3000


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY, latency=0.05) as emulator:
        yield emulator


def test_the_interval_grows_with_the_run_to_a_bound() -> None:
    assert [checkpoint_interval(1.0, age) for age in (0, 5, 10, 60, 300, 3600)] == [1, 1, 1, 6, 30, 30]
    assert checkpoint_interval(0, 2) == pytest.approx(0.2)  # checkpointSeconds 0: as often as a tenth of the age
    assert checkpoint_interval(120, 3600) == 120  # a longer checkpointSeconds is kept
    ages, age = [], 0.0
    while age < 3600:  # the longest run (spec.sync.timeoutSeconds)
        age += checkpoint_interval(1.0, age)
        ages.append(age)
    assert len(ages) < 3600 / MOST_SECONDS + 50, "requests per run are bounded, not one a second"


def test_a_stopped_run_checkpoints_what_was_delivered(
    duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    duckdb_source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i, f"u-{i}", {"i": i}) for i in range(ROWS)])
    # One request at a time, and an interval so long that only the first checkpoint comes before the stop.
    path = duckdb_source.manifest(
        tmp_path / "m.yaml", "users", "customAttributes", braze.url, checkpoint=3600, max_in_flight=1
    )
    manifests = load_manifests([path])
    integration = manifests.integration(None)
    credential = manifests.credential_for(integration)
    job = SyncJob.for_integration(integration, credential)
    settings = braze_settings(integration, manifests, None, required=True)
    assert settings is not None
    state = tmp_path / "state.json"
    warehouse = open_warehouse(credential, manifests)

    async def stopped_midway() -> None:
        async with BrazeClient(settings) as client:
            run = asyncio.create_task(run_sync(job, warehouse, client, JsonFileStore(state, job.key)))
            while len(braze.tracked("attributes")) < ROWS // 5:  # noqa: ASYNC110 (the emulator is another thread)
                await asyncio.sleep(0.01)
            run.cancel()  # what SIGTERM does
            with pytest.raises(asyncio.CancelledError):
                await run

    try:
        asyncio.run(stopped_midway())
    finally:
        warehouse.close()

    delivered = {o["external_id"] for o in braze.tracked("attributes")}
    assert len(delivered) < ROWS, "stopped before the end"
    watermark = datetime.fromisoformat(
        json.loads(state.read_text())["integrations"]["default/it"]["watermark"]["updatedAt"]
    )
    # past the first batch (the only periodic checkpoint), and covering only rows Braze acknowledged
    assert watermark >= at(ROWS // 5 - 2 * 75).replace(tzinfo=UTC)
    assert all(f"u-{i}" in delivered for i in range(ROWS) if at(i).replace(tzinfo=UTC) < watermark)


class DeferringStore(JsonFileStore):
    """A state store that is unavailable (an overloaded API server) for the first `deferred` saves of the
    watermarks `defers` picks (all of them by default)."""

    def __init__(
        self, path: Path, key: str, deferred: int, defers: Callable[[Watermark], bool] = lambda _: True
    ) -> None:
        super().__init__(path, key)
        self.deferred, self.defers = deferred, defers
        self.saves = 0  # of the watermarks `defers` picks

    def save_watermark(self, watermark: Watermark) -> None:
        if self.defers(watermark):
            self.saves += 1
            if self.saves <= self.deferred:
                raise CheckpointDeferred("cdiintegrations.cdi.ingest.dev default/it status: HTTP 429 Too Many Requests")
        super().save_watermark(watermark)


def _run_with(source: Source, braze: BrazeEmulator, tmp_path: Path, store: DeferringStore) -> RunSummary:
    path = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url, checkpoint=0, max_in_flight=2)
    manifests = load_manifests([path])
    integration = manifests.integration(None)
    credential = manifests.credential_for(integration)
    job = SyncJob.for_integration(integration, credential)
    settings = braze_settings(integration, manifests, None, required=True)
    assert settings is not None
    warehouse = open_warehouse(credential, manifests)

    async def run() -> RunSummary:
        async with BrazeClient(settings) as client:
            summary, _ = await run_sync(job, warehouse, client, store)
            return summary

    try:
        return asyncio.run(run())
    finally:
        warehouse.close()


def test_checkpoints_the_store_defers_leave_the_run_going_and_the_last_one_saves_it_all(
    duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    duckdb_source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i, f"u-{i}", {"i": i}) for i in range(ROWS)])
    store = DeferringStore(tmp_path / "state.json", "default/it", deferred=3)
    summary = _run_with(duckdb_source, braze, tmp_path, store)
    assert summary.result is RunResult.SUCCESS
    assert summary.rows_synced == ROWS == len({o["external_id"] for o in braze.tracked("attributes")})
    assert store.saves > store.deferred, "a deferred checkpoint is tried again"
    saved = store.load_watermark()
    assert saved is not None and saved.updated_at == at(ROWS - 1).replace(tzinfo=UTC) == summary.watermark


def test_a_last_checkpoint_the_store_defers_is_tried_again_and_the_run_succeeds(
    duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    """An API server busy just when the run ends (1,000 runs ending at once) does not fail the run, which would
    send every row again next time."""
    duckdb_source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i, f"u-{i}", {"i": i}) for i in range(ROWS)])
    last = at(ROWS - 1).replace(tzinfo=UTC)
    store = DeferringStore(tmp_path / "state.json", "default/it", 2, lambda watermark: watermark.updated_at == last)
    summary = _run_with(duckdb_source, braze, tmp_path, store)
    assert summary.result is RunResult.SUCCESS and summary.watermark == last
    assert store.saves == 3
    saved = store.load_watermark()
    assert saved is not None and saved.updated_at == last


def test_a_last_checkpoint_the_store_keeps_deferring_fails_the_run(
    duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "LAST_CHECKPOINT_SECONDS", 3.0)
    duckdb_source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i, f"u-{i}", {"i": i}) for i in range(ROWS)])
    store = DeferringStore(tmp_path / "state.json", "default/it", deferred=10**6)
    with pytest.raises(CheckpointDeferred, match="HTTP 429"):
        _run_with(duckdb_source, braze, tmp_path, store)
    assert store.load_watermark() is None
    assert store.saves >= 3, "tried again within LAST_CHECKPOINT_SECONDS"
