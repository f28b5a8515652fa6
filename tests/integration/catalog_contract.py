"""The catalog version of the contract table (catalogItems), which every warehouse must deliver identically.

Each warehouse's tests create `catalog_contract` with the warehouse's own types (PAYLOAD as its native JSON type
where it has one, DELETED as BOOLEAN), sync it to the Braze emulator's catalog `products`, and compare the items the
catalog then holds with `EXPECTED_ITEMS` and the row errors with `EXPECTED_ROW_ERRORS`: ties, a later row for the
same id winning, an item created and deleted in one run, invalid ids, a field the catalog lacks (refused by Braze
with a 400, isolated from its request), unicode and nested values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sources import CdiResult, Source, sync

from cdi_operator.braze.emulator import BrazeEmulator

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TABLE = "catalog_contract"
CATALOG = "products"
FIELDS = {"name": "string", "price": "number", "tags": "array", "spec": "object", "in_stock": "boolean"}
COLUMNS = ("UPDATED_AT", "ID", "PAYLOAD", "DELETED")


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (UPDATED_AT, ID, PAYLOAD as a dict or None, DELETED)
ROWS: list[tuple[Any, ...]] = [
    (_at(1), "sku-1", {"name": "Lamp", "price": 10}, False),
    (_at(2), "sku-2", {"name": "Desk", "price": 99.5, "tags": ["office", "wood"]}, None),
    (_at(2), "sku-3", {"name": "Zoë 東京 🎉", "spec": {"size": {"w": 3, "h": 4}}, "in_stock": True}, False),
    (_at(3), "sku-1", {"name": "Lamp v2", "price": 12}, False),
    (_at(4), "sku-4", {"name": "Gone soon"}, False),
    (_at(5), "sku-4", None, True),
    (_at(6), "bad id", {"name": "x"}, False),
    (_at(7), "sku-5", {"colour": "red"}, False),
    (_at(8), "sku-6", {"a.b": 1}, False),
    (_at(9), None, {"name": "orphan"}, False),
    (None, "sku-undated", {"name": "never selected"}, False),
]
UNDATED_ROWS = 1

EXPECTED_ITEMS: dict[str, dict[str, Any]] = {
    "sku-1": {"id": "sku-1", "name": "Lamp v2", "price": 12},
    "sku-2": {"id": "sku-2", "name": "Desk", "price": 99.5, "tags": ["office", "wood"]},
    "sku-3": {"id": "sku-3", "name": "Zoë 東京 🎉", "spec": {"size": {"w": 3, "h": 4}}, "in_stock": True},
}

EXPECTED_ROW_ERRORS = {
    ("INVALID_ITEM_ID", "id=bad id"),
    ("BRAZE_REJECTED", "id=sku-5"),
    ("INVALID_KEY", "id=sku-6"),
    ("MISSING_ITEM_ID", ""),
}


def text_rows() -> list[tuple[Any, ...]]:
    """ROWS with PAYLOAD as JSON text (NULL stays NULL)."""
    return [(t, i, None if p is None else json.dumps(p, ensure_ascii=False), d) for t, i, p, d in ROWS]


def sync_catalog(source: Source, braze: BrazeEmulator, tmp_path: Path, table: str = TABLE) -> CdiResult:
    """`cdi sync` of `table` as a catalogItems integration into the emulator's catalog `products`."""
    braze.create_catalog(CATALOG, FIELDS)
    manifest = source.manifest(tmp_path / f"{table}.yaml", table, "catalogItems", braze.url)
    manifest.write_text(manifest.read_text() + f"  catalog: {{name: {CATALOG}}}\n")
    return sync(manifest, tmp_path / f"{table}-state.json")


def assert_catalog_delivered(source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    result = sync_catalog(source, braze, tmp_path)

    assert result.exit_code == 0, result.stdout
    assert braze.catalog_items(CATALOG) == EXPECTED_ITEMS
    assert {(e["reason"], e["identifier"]) for e in result.record["rowErrors"]} == EXPECTED_ROW_ERRORS
    sku5 = next(e for e in result.record["rowErrors"] if e["identifier"] == "id=sku-5")
    assert "invalid-fields" in sku5["message"], "Braze's error id is reported"
    assert result.record["undatedRows"] == UNDATED_ROWS
    assert result.record["rowsRead"] == len(ROWS) - UNDATED_ROWS
