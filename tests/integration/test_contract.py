"""The same adversarial table (contract_rows.py) gives the same objects at Braze from every warehouse.

With CDI_CONTRACT_IN_IMAGE=1 the syncs run in the project's image instead (read-only root, uid 10001): each
warehouse client works there too (.ci/run runs the four warehouses' contract tests so once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from catalog_contract import TABLE, assert_catalog_delivered, text_rows
from contract_rows import EXPECTED_ATTRIBUTES, EXPECTED_ROW_ERRORS, ROWS, UNDATED_ROWS, normalise
from sources import BRAZE_KEY, IN_IMAGE_ENV, CdiResult, Source, sync, sync_in_image

from cdi_operator.braze.emulator import BrazeEmulator


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY) as emulator:
        yield emulator


def _payload_text(row: tuple[object, ...]) -> list[object]:
    return [*row[:-1], json.dumps(row[-1], ensure_ascii=False)]


def create_in_duckdb(source: Source) -> None:
    with duckdb.connect(source.settings["path"]) as con:
        con.execute(
            "CREATE TABLE contract (UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, ALIAS_NAME VARCHAR, "
            "ALIAS_LABEL VARCHAR, BRAZE_ID VARCHAR, EMAIL VARCHAR, PHONE VARCHAR, PAYLOAD JSON)"
        )
        con.executemany("INSERT INTO contract VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [_payload_text(r) for r in ROWS])


def create_in_postgres(source: Source) -> None:
    source.create_table(
        "contract",
        "UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR(64), ALIAS_NAME VARCHAR(64), ALIAS_LABEL VARCHAR(64), "
        "BRAZE_ID VARCHAR(64), EMAIL VARCHAR(128), PHONE VARCHAR(32), PAYLOAD VARCHAR(65535)",
        [_payload_text(r) for r in ROWS],
    )


def sync_contract(source: Source, braze: BrazeEmulator, tmp_path: Path) -> CdiResult:
    """`cdi sync` of the contract table as a customAttributes integration (in the image with IN_IMAGE_ENV=1)."""
    manifest = source.manifest(tmp_path / "m.yaml", "contract", "customAttributes", braze.url)
    in_image = os.environ.get(IN_IMAGE_ENV) == "1"
    return (sync_in_image if in_image else sync)(manifest, tmp_path / "state.json")


def assert_contract_delivered(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    result = sync_contract(source, braze, tmp_path)

    assert result.exit_code == 0, result.stdout
    assert normalise(braze.tracked("attributes")) == normalise(EXPECTED_ATTRIBUTES)
    assert {(e["reason"], e["identifier"]) for e in result.record["rowErrors"]} == EXPECTED_ROW_ERRORS
    assert braze.profiles["u-1"]["plan"] == "enterprise", "the later row of u-1 wins"
    assert result.record["undatedRows"] == UNDATED_ROWS, "a row without UPDATED_AT is reported, not silently left"
    assert "no UPDATED_AT" in result.record["message"]


def test_duckdb(duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_in_duckdb(duckdb_source)
    assert_contract_delivered(duckdb_source, braze, tmp_path)


@pytest.mark.postgres
def test_redshift(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_in_postgres(pg_source)
    assert_contract_delivered(pg_source, braze, tmp_path)


# --- the catalog version (catalog_contract.py) ---------------------------------------------------------------------


def create_catalog_in_duckdb(source: Source) -> None:
    with duckdb.connect(source.settings["path"]) as con:
        con.execute(f"CREATE TABLE {TABLE} (UPDATED_AT TIMESTAMPTZ, ID VARCHAR, PAYLOAD JSON, DELETED BOOLEAN)")
        con.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", text_rows())


def create_catalog_in_postgres(source: Source) -> None:
    source.create_table(
        TABLE, "UPDATED_AT TIMESTAMPTZ, ID VARCHAR(300), PAYLOAD VARCHAR(65535), DELETED BOOLEAN", text_rows()
    )


def test_catalog_duckdb(duckdb_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_catalog_in_duckdb(duckdb_source)
    assert_catalog_delivered(duckdb_source, braze, tmp_path)


@pytest.mark.postgres
def test_catalog_redshift(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_catalog_in_postgres(pg_source)
    assert_catalog_delivered(pg_source, braze, tmp_path)
