"""The embedded DuckDB adapter against real database files."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from cdi_operator.api.models import DuckDBSpec, WarehouseCredentialSpec
from cdi_operator.warehouses import connect as connect_any
from cdi_operator.warehouses.base import FailureReason, ReadWindow, WarehouseError
from cdi_operator.warehouses.duckdb import DuckDBWarehouse, connect

if TYPE_CHECKING:
    from tests.integration.conftest import DuckDBFile

T0 = datetime(2026, 3, 1, 12, 0, 0)
COLUMNS = "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR, PAYLOAD VARCHAR"
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return (T0 + timedelta(seconds=seconds)).replace(tzinfo=UTC)


def naive_rows(n: int) -> list[tuple[Any, ...]]:
    return [(at(i).replace(tzinfo=None), f"u-{i}", f'{{"i": {i}}}') for i in range(n)]


def open_file(source: DuckDBFile) -> DuckDBWarehouse:
    return connect(DuckDBSpec(path=str(source.path)), {})


def read_all(
    warehouse: DuckDBWarehouse, window: ReadWindow, chunk_rows: int = 1000, table: str = "users"
) -> list[list[tuple[Any, ...]]]:
    columns = ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"]
    return list(warehouse.read_changes(["main", table], columns, "UPDATED_AT", window, chunk_rows))


def test_describe(duckdb_file: DuckDBFile) -> None:
    duckdb_file.create_table("users", COLUMNS)
    description = open_file(duckdb_file).describe(["users"])
    assert [(c.name, c.type) for c in description.columns] == [
        ("UPDATED_AT", "TIMESTAMP"),
        ("EXTERNAL_ID", "VARCHAR"),
        ("PAYLOAD", "VARCHAR"),
    ]


def test_window_is_inclusive_ordered_and_chunked(duckdb_file: DuckDBFile) -> None:
    duckdb_file.create_table("users", COLUMNS, list(reversed(naive_rows(25))))
    warehouse = open_file(duckdb_file)
    ids = [r[1] for c in read_all(warehouse, ReadWindow(at(3), at(6))) for r in c]
    assert ids == ["u-3", "u-4", "u-5", "u-6"]
    chunks = read_all(warehouse, ReadWindow(None, at(24)), chunk_rows=7)
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    assert [r[1] for c in chunks for r in c] == [f"u-{i}" for i in range(25)]


def test_timestamps_become_aware_utc(duckdb_file: DuckDBFile) -> None:
    duckdb_file.create_table("naive", COLUMNS, [(datetime(2026, 1, 1, 10, 0), "a", "{}")])
    plus_two = timezone(timedelta(hours=2))
    duckdb_file.create_table(
        "aware",
        "UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, PAYLOAD VARCHAR",
        [(datetime(2026, 1, 1, 12, 0, tzinfo=plus_two), "b", "{}")],
    )
    point = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    warehouse = open_file(duckdb_file)
    for table in ("naive", "aware"):
        ((row,),) = read_all(warehouse, ReadWindow(point, point), table=table)
        assert row[0] == point and row[0].utcoffset() == timedelta(0)


def test_quoted_names_view_and_unicode(duckdb_file: DuckDBFile) -> None:
    payload = '{"name": "Zoë 🚀 — 東京"}'
    duckdb_file.create_table("Order", COLUMNS, [(T0, "ü-1", payload)])
    duckdb_file.execute('CREATE VIEW "select" AS SELECT * FROM "Order"')
    warehouse = open_file(duckdb_file)
    for table in ("Order", "select"):
        ((row,),) = read_all(warehouse, ReadWindow(None, FAR), table=table)
        assert row[1:] == ("ü-1", payload)


def test_count_after_and_preview(duckdb_file: DuckDBFile) -> None:
    duckdb_file.create_table("users", COLUMNS, naive_rows(50))
    warehouse = open_file(duckdb_file)
    assert warehouse.count_after(["users"], "UPDATED_AT", at(44)) == 5
    preview = warehouse.preview(["users"], ["EXTERNAL_ID", "UPDATED_AT"], 3)
    assert [p["EXTERNAL_ID"] for p in preview] == ["u-49", "u-48", "u-47"]
    assert preview[0]["UPDATED_AT"] == at(49)


def test_memory_stays_flat_on_a_large_read(duckdb_file: DuckDBFile) -> None:
    rows = 300_000
    duckdb_file.execute(
        "CREATE TABLE big AS SELECT TIMESTAMP '2026-01-01' + to_microseconds(i) AS UPDATED_AT, "
        "'user-' || i AS EXTERNAL_ID, repeat('x', 300) AS PAYLOAD FROM range(?) t(i)",
        [rows],
    )
    warehouse = open_file(duckdb_file)
    tracemalloc.start()
    try:
        seen = 0
        for chunk in warehouse.read_changes(
            ["big"], ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT", ReadWindow(None, FAR), 1000
        ):
            assert len(chunk) <= 1000
            seen += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == rows
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB; the whole read would be ~120 MB"


def test_reads_while_this_process_holds_a_writer(duckdb_file: DuckDBFile) -> None:
    duckdb_file.create_table("users", COLUMNS, naive_rows(3))
    with duckdb.connect(str(duckdb_file.path)) as writer:
        writer.execute("INSERT INTO users VALUES (?, 'late', '{}')", [at(10).replace(tzinfo=None)])
        assert open_file(duckdb_file).count_after(["users"], "UPDATED_AT", at(-1)) == 4


def test_holds_no_lock_between_operations(duckdb_file: DuckDBFile) -> None:
    duckdb_file.create_table("users", COLUMNS, naive_rows(3))
    warehouse = open_file(duckdb_file)
    warehouse.describe(["users"])
    writer = "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('DELETE FROM users').close()"
    subprocess.run([sys.executable, "-c", writer, str(duckdb_file.path)], check=True, timeout=60)
    assert warehouse.count_after(["users"], "UPDATED_AT", at(-1)) == 0


def test_failures(duckdb_file: DuckDBFile, tmp_path: Path) -> None:
    with pytest.raises(WarehouseError) as caught:
        connect(DuckDBSpec(path=str(tmp_path / "missing.duckdb")), {})
    assert caught.value.reason is FailureReason.DATABASE_MISSING
    warehouse = open_file(duckdb_file)
    with pytest.raises(WarehouseError) as caught:
        warehouse.describe(["nope"])
    assert caught.value.reason is FailureReason.TABLE_MISSING
    duckdb_file.create_table("texty", "UPDATED_AT VARCHAR, EXTERNAL_ID VARCHAR")
    with pytest.raises(WarehouseError) as caught:
        read_all(warehouse, ReadWindow(None, FAR), table="texty")
    assert caught.value.reason is FailureReason.COLUMN_TYPE


def test_connect_by_type(duckdb_file: DuckDBFile) -> None:
    spec = WarehouseCredentialSpec.model_validate({"type": "duckdb", "duckdb": {"path": str(duckdb_file.path)}})
    connect_any(spec, {}).close()
    snowflake = WarehouseCredentialSpec.model_validate(
        {"type": "snowflake", "snowflake": {"account": "a-b", "user": "u", "role": "r", "warehouse": "w"}}
    )
    with pytest.raises(WarehouseError, match="privateKeySecretRef"):
        connect_any(snowflake, {})
