"""The local state file of `cdi sync -f --state PATH`: atomic, per integration, and loud when it is damaged."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import pytest

from cdi_operator.api.models import RunResult, RunSummary, Watermark
from cdi_operator.runner import state
from cdi_operator.runner.run_record import merged_runs, new_run_id
from cdi_operator.runner.state import RUN_HISTORY, JsonFileStore, StateFileError, StateStore

T0 = datetime(2026, 3, 1, 12, 0, 0, 654321, tzinfo=UTC)


def run(n: int) -> RunSummary:
    return RunSummary.model_validate(
        {"startedAt": T0 + timedelta(minutes=n), "result": RunResult.SUCCESS, "rowsRead": n, "rowsSynced": n}
    )


def watermark(at: datetime = T0, *fingerprints: str) -> Watermark:
    return Watermark.model_validate({"updatedAt": at, "boundaryFingerprints": list(fingerprints)})


def test_is_a_state_store(tmp_path: Path) -> None:
    store: StateStore = JsonFileStore(tmp_path / "state.json", "default/users")
    assert store.load_watermark() is None


def test_missing_file_means_no_watermark_and_no_runs(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json", "default/users")
    assert store.load_watermark() is None
    assert store.runs() == []
    assert not (tmp_path / "state.json").exists()  # reading creates nothing


def test_watermark_round_trips_exactly(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    JsonFileStore(path, "default/users").save_watermark(watermark(T0, "b", "a"))
    loaded = JsonFileStore(path, "default/users").load_watermark()
    assert loaded == watermark(T0, "b", "a")
    assert loaded is not None and loaded.updated_at.microsecond == 654321


def test_file_is_readable_json_keyed_by_namespace_and_name(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    JsonFileStore(path, "marketing/users").save_watermark(watermark(T0, "f1"))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["integrations"]["marketing/users"]["watermark"] == {
        "updatedAt": "2026-03-01T12:00:00.654321Z",
        "boundaryFingerprints": ["f1"],
        "boundaryComplete": False,
        "source": None,
    }


def test_parent_directories_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    JsonFileStore(path, "default/users").save_watermark(watermark())
    assert path.exists()


def test_keys_are_isolated(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    users = JsonFileStore(path, "default/users")
    orders = JsonFileStore(path, "default/orders")
    other_ns = JsonFileStore(path, "marketing/users")
    users.save_watermark(watermark(T0, "u"))
    orders.save_watermark(watermark(T0 + timedelta(hours=1), "o"))
    orders.record_run(run(1))
    assert users.load_watermark() == watermark(T0, "u")
    assert orders.load_watermark() == watermark(T0 + timedelta(hours=1), "o")
    assert other_ns.load_watermark() is None
    assert users.runs() == []
    assert orders.runs() == [run(1)]
    users.save_watermark(watermark(T0 + timedelta(days=1)))
    assert orders.load_watermark() == watermark(T0 + timedelta(hours=1), "o")  # untouched by the other's save


def test_saving_a_watermark_keeps_the_run_history(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json", "default/users")
    store.record_run(run(1))
    store.save_watermark(watermark())
    assert store.runs() == [run(1)]
    store.record_run(run(2))
    assert store.load_watermark() == watermark()


def test_history_newest_first_and_capped(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json", "default/users")
    for n in range(RUN_HISTORY + 5):
        store.record_run(run(n))
    runs = store.runs()
    assert RUN_HISTORY == 10
    assert len(runs) == RUN_HISTORY
    assert [r.rows_read for r in runs] == list(range(RUN_HISTORY + 4, 4, -1))


def test_crash_mid_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    store = JsonFileStore(path, "default/users")
    store.save_watermark(watermark(T0, "old"))
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state.os, "fsync", crash)
    with pytest.raises(OSError, match="No space left"):
        store.save_watermark(watermark(T0 + timedelta(hours=1), "new"))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert store.load_watermark() == watermark(T0, "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left behind


def test_crash_while_serialising_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    store = JsonFileStore(path, "default/users")
    store.record_run(run(1))
    before = path.read_bytes()

    def half_written(data: object, out: TextIO, **kwargs: object) -> None:
        out.write('{"integrations": {"default/users": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(state.json, "dump", half_written)
    with pytest.raises(KeyboardInterrupt):
        store.record_run(run(2))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert store.runs() == [run(1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_replaces_the_file_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    store = JsonFileStore(path, "default/users")
    store.save_watermark(watermark())
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str | Path) -> None:
        replaced.append((Path(src).parent.name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(state.os, "replace", spy)
    store.save_watermark(watermark(T0 + timedelta(seconds=1)))
    assert replaced == [(tmp_path.name, "state.json")]  # the temporary file sits next to the target


@pytest.mark.parametrize("content", ["", "{not json", '{"integrations": ', "\x00\x01"])
def test_corrupt_file_names_the_path_and_the_fix(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content, encoding="utf-8")
    store = JsonFileStore(path, "default/users")
    with pytest.raises(StateFileError) as info:
        store.load_watermark()
    assert str(path) in str(info.value)
    assert "delete it" in str(info.value)
    with pytest.raises(StateFileError):
        store.save_watermark(watermark())  # never overwrite what we cannot read
    assert path.read_text(encoding="utf-8") == content


@pytest.mark.parametrize("content", ["[]", "{}", '{"integrations": []}', '"state"'])
def test_json_that_is_not_a_state_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StateFileError, match=f"state file {path} is not a cdi state file"):
        JsonFileStore(path, "default/users").load_watermark()


@pytest.mark.parametrize(
    "entry",
    [
        {"watermark": {"updatedAt": "yesterday"}},
        {"watermark": {"boundaryFingerprints": []}},
        {"runs": [{"result": "Success"}]},
        "not an object",
    ],
)
def test_damaged_entry_is_a_state_file_error(tmp_path: Path, entry: object) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"integrations": {"default/users": entry}}), encoding="utf-8")
    store = JsonFileStore(path, "default/users")
    with pytest.raises(StateFileError) as info:
        store.load_watermark()
        store.runs()
    assert str(path) in str(info.value)
    assert "default/users" in str(info.value)


def test_damaged_entry_of_another_integration_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"integrations": {"default/other": {"watermark": {}}}}), encoding="utf-8")
    store = JsonFileStore(path, "default/users")
    store.save_watermark(watermark())
    assert store.load_watermark() == watermark()


def test_a_run_record_replaces_its_own_entry_or_comes_first_within_the_limit() -> None:
    runs = [{"runId": "b", "result": "Running"}, {"runId": "a", "result": "Success"}]
    assert merged_runs(runs, {"runId": "b", "result": "Success"}, 10) == [
        {"runId": "b", "result": "Success"},
        {"runId": "a", "result": "Success"},
    ]
    assert merged_runs(runs, {"runId": "c", "result": "Skipped"}, 2) == [{"runId": "c", "result": "Skipped"}, runs[0]]
    assert merged_runs(None, {"runId": "c"}, 3) == [{"runId": "c"}]
    first, second = new_run_id(), new_run_id()
    assert first != second and len(first) == len("20261201T214302Z-3f9a1c")
