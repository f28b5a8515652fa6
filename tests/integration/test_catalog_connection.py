"""The connection test of a catalogItems integration: the catalog must exist in Braze and hold the preview's fields.

Against a real DuckDB file and the Braze emulator on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from cdi_operator.api.models import CdiIntegrationSpec, WarehouseCredentialSpec
from cdi_operator.api.reasons import BRAZE_SETTINGS_MISSING, CATALOG_FIELD_MISSING, CATALOG_NOT_FOUND
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller.connection import BrazeAccess, check_integration

KEY = "catalog-key"


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=KEY, catalog_list_rate_limit=100) as emulator:
        yield emulator


@pytest.fixture
def credential(tmp_path: Path) -> WarehouseCredentialSpec:
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE products (UPDATED_AT TIMESTAMPTZ, ID VARCHAR, PAYLOAD JSON, DELETED BOOLEAN)")
        rows = [("2026-01-01 00:00:00+00", "sku-1", json.dumps({"name": "Lamp", "colour": "red"}), False)]
        con.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", rows)
    return WarehouseCredentialSpec.model_validate({"type": "duckdb", "duckdb": {"path": str(path)}})


SPEC = CdiIntegrationSpec.model_validate(
    {
        "credentialRef": {"name": "wh"},
        "source": {"table": "products"},
        "dataType": "catalogItems",
        "catalog": {"name": "products"},
        "schedule": "0 * * * *",
    }
)


def test_catalog_not_found(credential: WarehouseCredentialSpec, braze: BrazeEmulator) -> None:
    braze.create_catalog("other", {})
    outcome = check_integration(credential, {}, SPEC, BrazeAccess(braze.url, KEY))
    assert (outcome.result, outcome.reason) == ("Failed", CATALOG_NOT_FOUND)
    assert "'products'" in outcome.message and "other" in outcome.message


def test_a_field_the_catalog_lacks_is_named(credential: WarehouseCredentialSpec, braze: BrazeEmulator) -> None:
    braze.create_catalog("products", {"name": "string"})
    outcome = check_integration(credential, {}, SPEC, BrazeAccess(braze.url, KEY))
    assert (outcome.result, outcome.reason) == ("Failed", CATALOG_FIELD_MISSING)
    assert "'colour'" in outcome.message
    assert outcome.preview, "the preview is kept to show the row"


def test_passes_when_the_catalog_has_the_fields(credential: WarehouseCredentialSpec, braze: BrazeEmulator) -> None:
    braze.create_catalog("products", {"name": "string", "colour": "string"})
    outcome = check_integration(credential, {}, SPEC, BrazeAccess(braze.url, KEY))
    assert outcome.passed, outcome.message


def test_wrong_key_and_no_settings(credential: WarehouseCredentialSpec, braze: BrazeEmulator) -> None:
    assert check_integration(credential, {}, SPEC, BrazeAccess(braze.url, "wrong")).reason == "BrazeUnauthorized"
    assert check_integration(credential, {}, SPEC, None).reason == BRAZE_SETTINGS_MISSING
