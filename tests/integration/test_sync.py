"""`cdi sync` end to end: a real warehouse (PostgreSQL through redshift_connector, or DuckDB) to the Braze emulator.

What a user relies on: every data type and identifier kind arrives as Braze expects it; invalid rows are reported,
never lost and never fatal; the watermark neither skips nor repeats rows (ties, late rows at the boundary, rows
dated in the future, updated rows); a second run sends nothing; faults from Braze lose nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sources import ATTRIBUTE_COLUMNS, BRAZE_KEY, Source, at, run_cdi, sync, user_row

from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.commands.common import ProgressView, open_warehouse
from cdi_operator.commands.manifests import load_manifests
from cdi_operator.runner import frontier
from cdi_operator.runner.state import JsonFileStore
from cdi_operator.runner.sync import Progress, SyncJob, run_sync


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY) as emulator:
        yield emulator


def external_ids(objects: list[dict[str, Any]]) -> list[str]:
    return [o["external_id"] for o in objects if "external_id" in o]


# --- every data type and identifier kind ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_attributes_for_every_identifier_kind(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    pg_source.create_table(
        "users",
        ATTRIBUTE_COLUMNS,
        [
            (at(1), "u-1", None, None, None, None, None, '{"plan": "pro", "nickname": null}'),
            (at(2), None, "anon-7", "web_session", None, None, None, '{"plan": "free"}'),
            (at(3), None, None, None, "5f2a9c0d1e", None, None, '{"plan": "plus"}'),
            (at(4), None, None, None, None, "ada@example.com", None, '{"plan": "pro"}'),
            (at(5), None, None, None, None, None, "+14155550100", '{"plan": "free"}'),
            (at(6), None, None, None, None, "both@example.com", "+14155550101", '{"plan": "plus"}'),
        ],
    )
    manifest = pg_source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0, result.stdout
    assert (result.record["rowsRead"], result.record["rowsSynced"], result.record["rowsFailed"]) == (6, 6, 0)
    sent = braze.tracked("attributes")
    assert sent[0] == {"external_id": "u-1", "plan": "pro", "nickname": None}
    assert sent[1] == {
        "user_alias": {"alias_name": "anon-7", "alias_label": "web_session"},
        "_update_existing_only": False,
        "plan": "free",
    }
    assert sent[2] == {"braze_id": "5f2a9c0d1e", "plan": "plus"}
    assert sent[3] == {"email": "ada@example.com", "_update_existing_only": False, "plan": "pro"}
    assert sent[4] == {"phone": "+14155550100", "_update_existing_only": False, "plan": "free"}
    assert sent[5]["email"] == "both@example.com" and "phone" not in sent[5]


@pytest.mark.postgres
def test_custom_events_default_their_time_to_updated_at(
    pg_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    pg_source.create_table(
        "events",
        ATTRIBUTE_COLUMNS,
        [
            (at(1), "u-1", None, None, None, None, None, '{"name": "login", "properties": {"via": "sso"}}'),
            (
                at(2),
                None,
                "anon-7",
                "web_session",
                None,
                None,
                None,
                '{"name": "viewed", "time": "2026-02-01T10:00:00Z"}',
            ),
        ],
    )
    manifest = pg_source.manifest(tmp_path / "m.yaml", "events", "customEvents", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0 and result.record["rowsSynced"] == 2, result.stdout
    first, second = braze.tracked("events")
    assert first["external_id"] == "u-1" and first["name"] == "login" and first["properties"] == {"via": "sso"}
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")) == at(1).replace(tzinfo=UTC)
    assert second["user_alias"] == {"alias_name": "anon-7", "alias_label": "web_session"}
    assert datetime.fromisoformat(second["time"].replace("Z", "+00:00")) == datetime(2026, 2, 1, 10, tzinfo=UTC)


@pytest.mark.postgres
def test_purchases(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    pg_source.create_table(
        "purchases",
        ATTRIBUTE_COLUMNS,
        [
            user_row(1, "u-1", {"product_id": "sku-1", "currency": "usd", "price": 9.99, "quantity": 2}),
            (
                at(2),
                None,
                None,
                None,
                "5f2a9c0d1e",
                None,
                None,
                '{"product_id": "sku-2", "currency": "EUR", "price": 0}',
            ),
        ],
    )
    manifest = pg_source.manifest(tmp_path / "m.yaml", "purchases", "purchaseEvents", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0 and result.record["rowsSynced"] == 2, result.stdout
    first, second = braze.tracked("purchases")
    assert (first["external_id"], first["product_id"], first["currency"], first["price"], first["quantity"]) == (
        "u-1",
        "sku-1",
        "USD",
        9.99,
        2,
    )
    assert "time" in first and second["braze_id"] == "5f2a9c0d1e"


@pytest.mark.postgres
def test_user_deletes_group_identifier_types(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    rows = [(at(i), f"gone-{i}", None, None, None) for i in range(60)]
    rows += [(at(100), None, "anon-1", "web_session", None), (at(101), None, None, None, "5f2a9c0d1e")]
    pg_source.create_table(
        "deletes",
        "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), ALIAS_NAME VARCHAR(64), ALIAS_LABEL VARCHAR(64), "
        "BRAZE_ID VARCHAR(64)",
        rows,
    )
    manifest = pg_source.manifest(tmp_path / "m.yaml", "deletes", "userDeletes", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0 and result.record["rowsSynced"] == 62, result.stdout
    deleted = braze.deleted()
    assert sorted(d for d in deleted if isinstance(d, str) and d.startswith("gone-")) == sorted(
        f"gone-{i}" for i in range(60)
    )
    assert {"alias_name": "anon-1", "alias_label": "web_session"} in deleted
    assert "5f2a9c0d1e" in deleted


@pytest.mark.postgres
def test_user_deletes_table_with_payload_is_a_sync_level_error(
    pg_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    pg_source.create_table("deletes", ATTRIBUTE_COLUMNS, [user_row(1, "u-1", {})])
    manifest = pg_source.manifest(tmp_path / "m.yaml", "deletes", "userDeletes", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 1
    assert "PAYLOAD" in result.record["message"]
    assert braze.deleted() == []


# --- row errors ----------------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_invalid_rows_are_reported_and_the_rest_delivered(
    pg_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    bad = {
        "INVALID_PAYLOAD_JSON": '{"plan": "pro"',
        "PAYLOAD_NOT_OBJECT": "[1, 2]",
        "INVALID_KEY": '{"favorite color": "teal"}',
        "KEY_TOO_LONG": json.dumps({"k" * 256: 1}),
        "VALUE_TOO_LONG": json.dumps({"bio": "x" * 256}),
        "TOO_MANY_ATTRIBUTES": json.dumps({f"a{i}": i for i in range(251)}),
        "PAYLOAD_TOO_LARGE": json.dumps({f"n{i}": {"v": "x" * 200} for i in range(6000)}),
    }
    rows = [user_row(i, f"bad-{reason}", payload) for i, (reason, payload) in enumerate(bad.items())]
    rows.append((at(50), None, None, None, None, None, None, '{"plan": "pro"}'))  # MISSING_IDENTIFIER
    rows.append((at(51), None, "anon-1", None, None, None, None, '{"plan": "pro"}'))  # ALIAS_INCOMPLETE
    rows += [user_row(60 + i, f"good-{i}", {"plan": "pro"}) for i in range(5)]
    # Redshift's VARCHAR(MAX) holds 64 KB; PostgreSQL's TEXT lets the 1 MB limit be reached.
    pg_source.create_table("users", ATTRIBUTE_COLUMNS.replace("VARCHAR(65535)", "TEXT"), rows)
    braze.reject_external_ids = {"good-4"}
    manifest = pg_source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0, "row errors never fail the sync as a whole"
    assert result.record["result"] == "Partial"
    assert (result.record["rowsRead"], result.record["rowsSynced"], result.record["rowsFailed"]) == (14, 4, 10)
    reasons = {e["reason"]: e for e in result.record["rowErrors"]}
    assert set(reasons) == {*bad, "MISSING_IDENTIFIER", "ALIAS_INCOMPLETE", "BRAZE_REJECTED"}
    assert reasons["INVALID_KEY"]["identifier"] == "external_id=bad-INVALID_KEY"
    assert "favorite color" in reasons["INVALID_KEY"]["message"]
    assert reasons["BRAZE_REJECTED"]["identifier"] == "external_id=good-4"
    assert external_ids(braze.tracked("attributes")) == ["good-0", "good-1", "good-2", "good-3"]
    # The watermark passes the invalid rows: fixing a row means updating it, which gives it a new UPDATED_AT.
    again = sync(manifest, tmp_path / "state.json")
    assert (again.record["rowsRead"], again.record["rowsFailed"]) == (1, 0)


# --- the watermark -------------------------------------------------------------------------------------------------


@pytest.fixture(params=["postgres", "duckdb"])
def source(request: pytest.FixtureRequest) -> Source:
    fixture = "pg_source" if request.param == "postgres" else "duckdb_source"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def test_ties_late_rows_updates_and_reruns(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    source.create_table(
        "users",
        ATTRIBUTE_COLUMNS,
        [
            user_row(1, "a", {"v": 1}),
            user_row(2, "b", {"v": 1}),
            user_row(2, "c", {"v": 1}),
            user_row(2, "d", {"v": 1}),
        ],
    )
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)
    state = tmp_path / "state.json"

    first = sync(manifest, state)
    assert first.record["rowsSynced"] == 4
    assert datetime.fromisoformat(first.record["watermark"]) == at(2).replace(tzinfo=UTC)

    second = sync(manifest, state)
    assert (second.record["rowsSynced"], second.record["rowsSkipped"]) == (0, 3), "the tie is read, not re-sent"
    assert len(braze.tracked("attributes")) == 4

    # A writer commits a row dated exactly at the watermark after the sync (Braze's CDI would skip it for good),
    # and user a is updated.
    source.insert("users", [user_row(2, "late", {"v": 1}), user_row(3, "a", {"v": 2})])
    third = sync(manifest, state)
    assert third.record["rowsSynced"] == 2
    assert external_ids(braze.tracked("attributes"))[4:] == ["late", "a"]
    assert braze.profiles["a"]["v"] == 2

    fourth = sync(manifest, state)
    assert fourth.record["rowsSynced"] == 0


def test_another_table_starts_from_the_beginning(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(5, "new-a", {"v": 1}), user_row(6, "new-b", {"v": 1})])
    source.create_table(
        "old_users", ATTRIBUTE_COLUMNS, [user_row(1, "old-a", {"v": 1}), user_row(2, "old-b", {"v": 1})]
    )
    state = tmp_path / "state.json"
    first = sync(source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url), state)
    assert first.record["rowsSynced"] == 2 and "sourceChanged" not in first.record
    users_source = _saved_watermark(state)["source"]
    assert users_source.endswith(".users")

    # Rows of the other table older than the watermark are sent all the same, and the record says why.
    moved = sync(source.manifest(tmp_path / "m.yaml", "old_users", "customAttributes", braze.url), state)
    assert moved.record["rowsSynced"] == 2
    assert moved.record["sourceChanged"] == users_source
    assert "started from the beginning" in moved.record["message"]
    assert _saved_watermark(state)["source"] == users_source.removesuffix("users") + "old_users"
    assert (
        sync(source.manifest(tmp_path / "m.yaml", "old_users", "customAttributes", braze.url), state).record[
            "rowsSynced"
        ]
        == 0
    )
    assert sorted(external_ids(braze.tracked("attributes"))) == ["new-a", "new-b", "old-a", "old-b"]


def test_a_row_dated_in_the_future_does_not_freeze_the_sync(
    source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    source.create_table(
        "users",
        ATTRIBUTE_COLUMNS,
        [
            (now - timedelta(hours=2), "past", None, None, None, None, None, "{}"),
            (now + timedelta(days=365), "future", None, None, None, None, None, "{}"),
            (now - timedelta(seconds=5), "settling", None, None, None, None, None, "{}"),
        ],
    )
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url, settle=60)
    state = tmp_path / "state.json"

    first = sync(manifest, state)
    assert first.record["futureRows"] == 1
    assert external_ids(braze.tracked("attributes")) == ["past"]

    source.insert("users", [(now - timedelta(hours=1), "written-later", None, None, None, None, None, "{}")])
    second = sync(manifest, state)
    assert second.record["rowsSynced"] == 1, "rows older than the future one still flow"
    assert external_ids(braze.tracked("attributes")) == ["past", "written-later"]


def test_rows_of_one_user_arrive_in_order(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    rows = [user_row(i, f"u-{i % 7}", {"seq": i}) for i in range(2000)]
    source.create_table("users", ATTRIBUTE_COLUMNS, rows)
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url, max_in_flight=8)

    result = sync(manifest, tmp_path / "state.json")

    assert result.record["rowsSynced"] == 2000
    for user in range(7):
        seqs = [o["seq"] for o in braze.tracked("attributes") if o["external_id"] == f"u-{user}"]
        assert seqs == sorted(seqs) and len(seqs) == len(range(user, 2000, 7))
        assert braze.profiles[f"u-{user}"]["seq"] == max(range(user, 2000, 7))


# --- sync-level outcomes and the command line ----------------------------------------------------------------------


def test_dry_run_sends_nothing_and_keeps_the_watermark(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(1, "a", {"v": 1}), user_row(2, "b", "{bad")])
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)
    state = tmp_path / "state.json"

    result = sync(manifest, state, "--dry-run")

    assert result.exit_code == 0
    assert result.record["dryRun"]["objects"] == {"attributes": 1}
    assert result.record["dryRun"]["sample"] == [{"attributes": {"external_id": "a", "v": 1}}]
    assert result.record["rowsFailed"] == 1
    assert braze.tracked("attributes") == [] and not state.exists()


def test_wrong_braze_key_fails_the_sync_without_leaking_it(
    source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(1, "a", {"v": 1})])
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)
    manifest.write_text(manifest.read_text().replace(f"api-key: {BRAZE_KEY}", "api-key: sk-wrong-key-123"))
    state = tmp_path / "state.json"

    result = sync(manifest, state)

    assert result.exit_code == 1
    assert result.record["result"] == "Error" and "401" in result.record["message"]
    assert "sk-wrong-key-123" not in result.stdout
    assert json.loads(state.read_text())["integrations"]["default/it"].get("watermark") is None


def test_bad_input_exits_2_naming_the_field(source: Source, tmp_path: Path) -> None:
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", "http://127.0.0.1:9")
    manifest.write_text(manifest.read_text().replace('schedule: "0 * * * *"', 'schedule: "*/5 * * * *"'))

    result = run_cdi("sync", "-f", str(manifest), "--state", str(tmp_path / "s.json"))

    assert result.exit_code == 2


@pytest.mark.postgres
def test_missing_table_fails_the_sync(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    manifest = pg_source.manifest(tmp_path / "m.yaml", "no_such_table", "customAttributes", braze.url)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 1
    assert "TableMissing" in result.record["message"]


# --- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_429s_5xx_and_dropped_connections_lose_nothing(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    pg_source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i, f"u-{i}", {"i": i}) for i in range(3000)])
    braze.set_random_faults({"http429": 0.05, "http500": 0.05, "http503": 0.05, "drop": 0.05}, seed=11)
    manifest = pg_source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url, max_in_flight=8)

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0 and result.record["rowsSynced"] == 3000, result.stdout
    assert set(external_ids(braze.tracked("attributes"))) == {f"u-{i}" for i in range(3000)}
    assert sum(braze.status_counts.get(code, 0) for code in (429, 500, 503)) > 0


def test_progress_counts_the_rows_to_read_for_its_bar(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i // 2, f"u-{i}", {"i": i}) for i in range(10)])
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)
    state = tmp_path / "state.json"
    sync(manifest, state)
    source.insert("users", [user_row(4, "late", {}), user_row(100, "new", {})])  # at the watermark, and after it

    manifests = load_manifests([manifest])
    integration = manifests.integration(None)
    credential = manifests.credential_for(integration)
    job = SyncJob.for_integration(integration, credential)
    warehouse = open_warehouse(credential, manifests)
    seen: list[Progress] = []
    try:
        summary, _ = asyncio.run(
            run_sync(job, warehouse, None, JsonFileStore(state, job.key), on_progress=seen.append, estimate_total=True)
        )
    finally:
        warehouse.close()

    assert seen[-1].rows_total == summary.rows_read == 4, "the two rows at the watermark, the late one and the new one"
    view = ProgressView(io.StringIO(), interactive=True)
    view(Progress(rows_read=2, rows_total=4, finished=True))
    assert "[###############               ]  50%" in view.stream.getvalue()  # type: ignore[attr-defined]


def _with_sync_option(manifest: Path, key: str, value: Any) -> Path:
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    for doc in docs:
        if doc.get("kind") == "CdiIntegration":
            doc["spec"].setdefault("sync", {})[key] = value
    manifest.write_text(yaml.safe_dump_all(docs))
    return manifest


def _saved_watermark(state: Path) -> dict[str, Any]:
    return next(iter(json.loads(state.read_text())["integrations"].values()))["watermark"]  # type: ignore[no-any-return]


def test_a_bulk_load_with_one_updated_at_keeps_the_watermark_small(
    source: Source, braze: BrazeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Too many rows at one UPDATED_AT to list in a CR status (scaled down from 10,000 to 20 here).
    monkeypatch.setattr(frontier, "MAX_BOUNDARY_FINGERPRINTS", 20)
    source.create_table(
        "users", ATTRIBUTE_COLUMNS, [user_row(0, "a", {"v": 1}), *(user_row(1, f"b{i}", {"v": 1}) for i in range(50))]
    )
    manifest = source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)
    state = tmp_path / "state.json"

    assert sync(manifest, state).record["rowsSynced"] == 51
    saved = _saved_watermark(state)
    assert saved["boundaryComplete"] is True and saved["boundaryFingerprints"] == []
    assert datetime.fromisoformat(saved["updatedAt"]) == at(1).replace(tzinfo=UTC)

    again = sync(manifest, state)
    assert (again.record["rowsSynced"], again.record["rowsSkipped"]) == (0, 50), "the bulk load is not re-sent"

    source.insert("users", [user_row(2, "c", {"v": 1})])
    assert sync(manifest, state).record["rowsSynced"] == 1
    saved = _saved_watermark(state)
    assert saved["boundaryComplete"] is False and len(saved["boundaryFingerprints"]) == 1
    assert len(braze.tracked("attributes")) == 52


def test_max_rows_per_run_finishes_the_tie_group_so_the_next_run_continues(
    source: Source, braze: BrazeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frontier, "MAX_BOUNDARY_FINGERPRINTS", 20)
    source.create_table(
        "users",
        ATTRIBUTE_COLUMNS,
        [*(user_row(1, f"b{i}", {"v": 1}) for i in range(30)), *(user_row(2, f"c{i}", {"v": 1}) for i in range(5))],
    )
    manifest = _with_sync_option(
        source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url), "maxRowsPerRun", 10
    )
    state = tmp_path / "state.json"

    first = sync(manifest, state)
    assert first.record["result"] == "LimitExceeded"
    assert first.record["rowsSynced"] == 30, "the limit fell inside the tie group at one UPDATED_AT: all of it"
    second = sync(manifest, state)
    assert (second.record["result"], second.record["rowsSynced"]) == ("Success", 5)
    assert sorted(external_ids(braze.tracked("attributes"))) == sorted(
        [f"b{i}" for i in range(30)] + [f"c{i}" for i in range(5)]
    ), "every row once: none lost, none sent twice"
