"""spec.updateExistingOnly: every attributes object goes out with `_update_existing_only: true`, and the emulator,
like Braze, applies rows only to users it knows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from sources import BRAZE_KEY, Source, sync

from cdi_operator.braze.emulator import BrazeEmulator


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY) as emulator:
        yield emulator


def test_rows_for_unknown_users_are_skipped_by_braze(
    duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path
) -> None:
    with duckdb.connect(duckdb_source.settings["path"]) as con:
        con.execute("CREATE TABLE users (UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, EMAIL VARCHAR, PAYLOAD JSON)")
        con.execute(
            "INSERT INTO users VALUES ('2026-01-01 00:00:01+00', 'known', NULL, '{\"plan\": \"pro\"}'), "
            "('2026-01-01 00:00:02+00', 'stranger', NULL, '{\"plan\": \"pro\"}'), "
            "('2026-01-01 00:00:03+00', NULL, 'new@example.com', '{\"plan\": \"free\"}')"
        )
    braze.add_profile("known", {"plan": "free"})
    manifest = duckdb_source.manifest(tmp_path / "m.yaml", "users", "customAttributes", braze.url)
    manifest.write_text(manifest.read_text() + "  updateExistingOnly: true\n")

    result = sync(manifest, tmp_path / "state.json")

    assert result.exit_code == 0, result.stdout
    assert [o["_update_existing_only"] for o in braze.tracked("attributes")] == [True, True, True]
    assert braze.profiles == {"known": {"plan": "pro"}}
    assert {o.get("external_id") or o.get("email") for o in braze.skipped} == {"stranger", "new@example.com"}
    assert result.record["rowsSynced"] == 3, "Braze accepts the objects; skipping unknown users is its decision"
