"""Reading and converting in a child process (runner/reading.py) against a real PostgreSQL, through redshift_connector:
the same rows, fingerprints and row errors as in the reader thread, warehouse failures as the same errors, and no
child left behind."""

from __future__ import annotations

import functools
import multiprocessing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from cdi_operator.api.models import DataType
from cdi_operator.runner.columns import plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.reading import ChildReader, Converted, Read, convert_in_thread
from cdi_operator.runner.rows import Delivery, RowError, RowErrorReason
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


def read_of(schema: PgSchema, table: str = "users", chunk_rows: int = 10) -> tuple[Read, RowConverter]:
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    read = Read(("cdi", schema.name, table), plan.columns, "UPDATED_AT", ReadWindow(None, FAR), chunk_rows)
    return read, RowConverter(DataType.CUSTOM_ATTRIBUTES, plan)


def plain(chunks: list[list[Converted]]) -> list[tuple[Any, ...]]:
    """Each converted row with its body as a value, whichever side converted it."""
    out: list[tuple[Any, ...]] = []
    for chunk in chunks:
        for converted, fingerprint in chunk:
            if isinstance(converted, Delivery):
                body = orjson.loads(converted.body) if isinstance(converted.body, bytes) else converted.body
                out.append((converted.target, body, converted.user_key, converted.updated_at, fingerprint))
            else:
                out.append((converted, fingerprint))
    return out


def test_child_converts_as_the_thread_does(pg: PgServer, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, rows(35))
    read, converter = read_of(pg_schema)
    warehouse = connect(pg.spec(), pg.secrets())
    try:
        in_thread = list(convert_in_thread(warehouse, read, converter))
    finally:
        warehouse.close()
    in_child = list(ChildReader(functools.partial(connect, pg.spec(), pg.secrets()), read, converter))
    assert [len(c) for c in in_child] == [10, 10, 10, 5]
    assert plain(in_child) == plain(in_thread)
    errors = [c for chunk in in_child for c, _ in chunk if isinstance(c, RowError)]
    assert [e.reason for e in errors] == [RowErrorReason.INVALID_PAYLOAD_JSON, RowErrorReason.MISSING_IDENTIFIER]
    assert not multiprocessing.active_children()


def test_a_warehouse_failure_in_the_child_is_the_same_error(pg: PgServer, pg_schema: PgSchema) -> None:
    read, converter = read_of(pg_schema, table="missing")
    reader = ChildReader(functools.partial(connect, pg.spec(), pg.secrets()), read, converter)
    with pytest.raises(WarehouseError) as failed:
        next(reader)
    assert failed.value.reason is FailureReason.TABLE_MISSING
    assert "missing" in failed.value.message
    assert not multiprocessing.active_children()


def test_closing_mid_read_ends_the_child(pg: PgServer, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, rows(200))
    read, converter = read_of(pg_schema)
    reader = ChildReader(functools.partial(connect, pg.spec(), pg.secrets()), read, converter)
    assert len(next(reader)) == 10
    reader.close()
    assert not multiprocessing.active_children()
    with pytest.raises(StopIteration):
        next(reader)
