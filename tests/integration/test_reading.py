"""Reading and batching in a child process (runner/reading.py) against a real PostgreSQL, through redshift_connector:
the same requests, segments and row errors as in the reader thread, warehouse failures as the same errors, and no
child left behind."""

from __future__ import annotations

import functools
import multiprocessing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from cdi_operator.api.models import DataType
from cdi_operator.runner.batching import TrackBatcher
from cdi_operator.runner.columns import plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.reading import ChildReader, Read, batch_in_thread
from cdi_operator.runner.rows import RowErrorReason
from cdi_operator.warehouses.base import FailureReason, ReadWindow, WarehouseError
from cdi_operator.warehouses.redshift import connect

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema, PgServer

pytestmark = pytest.mark.postgres

COLUMNS = "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(65535)"
T0 = datetime(2026, 3, 1, 12, 0, 0)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def rows(n: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [(T0 + timedelta(seconds=i // 3), f"u-{i}", f'{{"i": {i}}}') for i in range(n)]
    out[5] = (out[5][0], "u-5", "not json")
    out[8] = (out[8][0], None, '{"i": 8}')
    return out


def read_of(schema: PgSchema, table: str = "users", chunk_rows: int = 10) -> tuple[Read, TrackBatcher]:
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    read = Read(("cdi", schema.name, table), plan.columns, "UPDATED_AT", ReadWindow(None, FAR), chunk_rows)
    batcher = TrackBatcher(
        RowConverter(DataType.CUSTOM_ATTRIBUTES, plan), limit=4, max_rows=1000, delivered_before=lambda *_: False
    )
    return read, batcher


def test_child_batches_as_the_thread_does(pg: PgServer, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, rows(35))
    read, batcher = read_of(pg_schema)
    warehouse = connect(pg.spec(), pg.secrets())
    try:
        in_thread = list(batch_in_thread(warehouse, read, batcher))
    finally:
        warehouse.close()
    in_child = list(ChildReader(functools.partial(connect, pg.spec(), pg.secrets()), *read_of(pg_schema)))
    assert [c.rows_read for c in in_child] == [10, 10, 10, 5, 0]  # four chunks, then the batch left open
    assert in_child == in_thread
    batches = [b for chunk in in_child for b in chunk.batches]
    assert [b.count for b in batches] == [4] * 8 + [1]  # 33 objects: two rows are errors
    sent = [orjson.loads(b"[" + b.objects + b"]") for b in batches]
    assert [o["external_id"] for objects in sent for o in objects] == [f"u-{i}" for i in range(35) if i not in (5, 8)]
    errors = [e for chunk in in_child for e in chunk.row_errors]
    assert [e.reason for e in errors] == [RowErrorReason.INVALID_PAYLOAD_JSON, RowErrorReason.MISSING_IDENTIFIER]
    assert not multiprocessing.active_children()


def test_a_warehouse_failure_in_the_child_is_the_same_error(pg: PgServer, pg_schema: PgSchema) -> None:
    read, batcher = read_of(pg_schema, table="missing")
    reader = ChildReader(functools.partial(connect, pg.spec(), pg.secrets()), read, batcher)
    with pytest.raises(WarehouseError) as failed:
        next(reader)
    assert failed.value.reason is FailureReason.TABLE_MISSING
    assert "missing" in failed.value.message
    assert not multiprocessing.active_children()


def test_closing_mid_read_ends_the_child(pg: PgServer, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, rows(200))
    read, batcher = read_of(pg_schema)
    reader = ChildReader(functools.partial(connect, pg.spec(), pg.secrets()), read, batcher)
    assert next(reader).rows_read == 10
    reader.close()
    assert not multiprocessing.active_children()
    with pytest.raises(StopIteration):
        next(reader)
