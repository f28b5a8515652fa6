"""The Redshift adapter against a real PostgreSQL server (hack/postgres.sh), through redshift_connector."""

from __future__ import annotations

import socket
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from cdi_operator.api.models import WarehouseCredentialSpec
from cdi_operator.warehouses import MissingSecretError
from cdi_operator.warehouses import connect as connect_any
from cdi_operator.warehouses.base import FailureReason, ReadWindow, WarehouseError
from cdi_operator.warehouses.redshift import RedshiftWarehouse, connect

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema, PgServer

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 3, 1, 12, 0, 0)
COLUMNS = "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(65535)"
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return (T0 + timedelta(seconds=seconds)).replace(tzinfo=UTC)


@pytest.fixture
def warehouse(pg: PgServer) -> Iterator[RedshiftWarehouse]:
    opened = connect(pg.spec(), pg.secrets())
    yield opened
    opened.close()


def naive_rows(n: int) -> list[tuple[Any, ...]]:
    return [(at(i).replace(tzinfo=None), f"u-{i}", f'{{"i": {i}}}') for i in range(n)]


def read_all(
    warehouse: RedshiftWarehouse,
    schema: PgSchema,
    window: ReadWindow,
    chunk_rows: int = 1000,
    table: str = "users",
) -> list[list[tuple[Any, ...]]]:
    return list(
        warehouse.read_changes(
            ["cdi", schema.name, table],
            ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"],
            "UPDATED_AT",
            window,
            chunk_rows,
        )
    )


def test_describe_columns_in_order(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS)
    description = warehouse.describe(["cdi", pg_schema.name, "users"])
    assert [c.name for c in description.columns] == ["updated_at", "external_id", "payload"]
    assert description.column("UPDATED_AT") is not None
    assert description.columns[0].type == "TIMESTAMP WITHOUT TIME ZONE"
    assert description.name == f"cdi.{pg_schema.name}.users"


def test_upper_case_source_name_finds_the_folded_table(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, naive_rows(2))
    description = warehouse.describe(["CDI", pg_schema.name.upper(), "USERS"])
    assert len(description.columns) == 3
    assert len(read_all(warehouse, pg_schema, ReadWindow(None, FAR), table="USERS")[0]) == 2


def test_window_is_inclusive_and_ordered(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    rows = naive_rows(10)
    pg_schema.create_table("users", COLUMNS, list(reversed(rows)))
    chunks = read_all(warehouse, pg_schema, ReadWindow(since=at(3), until=at(6)))
    assert [r[1] for chunk in chunks for r in chunk] == ["u-3", "u-4", "u-5", "u-6"]
    everything = read_all(warehouse, pg_schema, ReadWindow(since=None, until=at(9)))
    assert [r[1] for chunk in everything for r in chunk] == [f"u-{i}" for i in range(10)]
    assert read_all(warehouse, pg_schema, ReadWindow(since=at(20), until=at(30))) == []


def test_chunks_are_bounded(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, naive_rows(25))
    chunks = read_all(warehouse, pg_schema, ReadWindow(None, FAR), chunk_rows=7)
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    assert all(isinstance(row, tuple) for chunk in chunks for row in chunk)


def test_timestamps_with_and_without_zone_become_aware_utc(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("naive", COLUMNS, [(datetime(2026, 1, 1, 10, 0), "a", "{}")])
    plus_two = timezone(timedelta(hours=2))
    pg_schema.create_table(
        "aware",
        "UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(100)",
        [(datetime(2026, 1, 1, 12, 0, tzinfo=plus_two), "b", "{}")],
    )
    window = ReadWindow(since=datetime(2026, 1, 1, 10, 0, tzinfo=UTC), until=datetime(2026, 1, 1, 10, 0, tzinfo=UTC))
    for table in ("naive", "aware"):
        ((row,),) = read_all(warehouse, pg_schema, window, table=table)
        assert row[0] == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
        assert row[0].utcoffset() == timedelta(0)


def test_quoted_table_name_and_view_and_unicode(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    payload = '{"name": "Zoë 🚀 — 東京"}'
    pg_schema.create_table("Order", COLUMNS, [(at(1).replace(tzinfo=None), "ü-1", payload)])
    pg_schema.execute(f'CREATE VIEW "{pg_schema.name}"."select" AS SELECT * FROM "{pg_schema.name}"."Order"')
    for table in ("Order", "select"):
        assert warehouse.describe(["cdi", pg_schema.name, table]).columns[0].name == "updated_at"
        ((row,),) = read_all(warehouse, pg_schema, ReadWindow(None, FAR), table=table)
        assert row[1:] == ("ü-1", payload)


def test_count_after_and_preview(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, naive_rows(50))
    table = ["cdi", pg_schema.name, "users"]
    assert warehouse.count_after(table, "UPDATED_AT", at(44)) == 5
    assert warehouse.count_after(table, "updated_at", at(100)) == 0
    preview = warehouse.preview(table, ["EXTERNAL_ID", "UPDATED_AT"], 3)
    assert [p["EXTERNAL_ID"] for p in preview] == ["u-49", "u-48", "u-47"]
    assert preview[0]["UPDATED_AT"] == at(49)


def test_preview_reads_only_what_it_shows(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, naive_rows(2000))
    pg_schema.execute("SELECT pg_stat_reset()")
    received = []
    original = warehouse._run

    def spy(*args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        rows = original(*args, **kwargs)  # type: ignore[arg-type]
        received.append(len(rows))
        return rows

    warehouse._run = spy  # type: ignore[method-assign]
    assert len(warehouse.preview(["cdi", pg_schema.name, "users"], ["EXTERNAL_ID"], 5)) == 5
    assert max(received) == 5


def test_memory_stays_flat_on_a_large_read(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    rows = 200_000
    pg_schema.execute(
        f'CREATE TABLE "{pg_schema.name}".big AS SELECT '
        "TIMESTAMP '2026-01-01' + i * interval '1 millisecond' AS updated_at, 'user-' || i AS external_id, "
        "repeat('x', 300) AS payload FROM generate_series(1, %s) i",
        [rows],
    )
    tracemalloc.start()
    try:
        seen, peak_chunk = 0, 0
        for chunk in warehouse.read_changes(
            ["cdi", pg_schema.name, "big"],
            ["updated_at", "external_id", "payload"],
            "updated_at",
            ReadWindow(None, FAR),
            1000,
        ):
            seen += len(chunk)
            peak_chunk = max(peak_chunk, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == rows
    # One chunk of 1000 rows of ~350 bytes is ~1 MB in Python objects; the whole table would be ~100 MB.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for chunks of {peak_chunk} rows"


def test_abandoned_read_leaves_the_connection_usable(warehouse: RedshiftWarehouse, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, naive_rows(30))
    chunks = warehouse.read_changes(
        ["cdi", pg_schema.name, "users"], ["UPDATED_AT"], "UPDATED_AT", ReadWindow(None, FAR), 10
    )
    assert len(next(chunks)) == 10
    chunks.close()  # type: ignore[attr-defined]
    assert warehouse.count_after(["cdi", pg_schema.name, "users"], "UPDATED_AT", at(-1)) == 30


# --- failures, each produced for real -------------------------------------------------------------------


def expect_failure(reason: FailureReason, secret: str, call: object) -> WarehouseError:
    with pytest.raises(WarehouseError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.reason is reason, str(caught.value)
    assert secret not in str(caught.value)
    return caught.value


def test_bad_password(pg: PgServer) -> None:
    wrong = "not-the-password-1234"
    error = expect_failure(FailureReason.AUTH_FAILED, wrong, lambda: connect(pg.spec(), pg.secrets(wrong)))
    assert "pg-credentials" in error.message


def test_missing_database(pg: PgServer) -> None:
    expect_failure(FailureReason.DATABASE_MISSING, pg.password, lambda: connect(pg.spec(database="nope"), pg.secrets()))


def test_missing_table_and_schema(warehouse: RedshiftWarehouse, pg_schema: PgSchema, pg: PgServer) -> None:
    expect_failure(FailureReason.TABLE_MISSING, pg.password, lambda: warehouse.describe(["cdi", pg_schema.name, "x"]))
    expect_failure(FailureReason.TABLE_MISSING, pg.password, lambda: warehouse.describe(["cdi", "no_schema", "x"]))


def test_role_without_select(pg: PgServer, pg_schema: PgSchema) -> None:
    pg_schema.create_table("users", COLUMNS, naive_rows(1))
    role, password = pg_schema.role_without_select()
    reader = connect(pg.spec(user=role), pg.secrets(password))
    try:
        error = expect_failure(
            FailureReason.PERMISSION_DENIED,
            password,
            lambda: reader.describe(["cdi", pg_schema.name, "users"]),
        )
    finally:
        reader.close()
    assert f"GRANT SELECT ON {pg_schema.name}.users TO {role}" in error.message


def test_closed_port_and_unknown_host(pg: PgServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    expect_failure(FailureReason.UNREACHABLE, pg.password, lambda: connect(pg.spec(port=closed), pg.secrets()))
    expect_failure(
        FailureReason.UNREACHABLE,
        pg.password,
        lambda: connect(pg.spec(host="no-such-host.invalid"), pg.secrets()),
    )


def test_connect_by_type_and_missing_secret(pg: PgServer) -> None:
    spec = WarehouseCredentialSpec.model_validate({"type": "redshift", "redshift": pg.spec().model_dump(by_alias=True)})
    opened = connect_any(spec, pg.secrets())
    opened.close()
    with pytest.raises(MissingSecretError, match="kubectl create secret generic pg-credentials"):
        connect_any(spec, {})
