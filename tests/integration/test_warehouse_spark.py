"""The `spark` tier: the Databricks adapter through the real `databricks-sql-connector` against real Spark SQL (Spark's
Thrift server from PyPI's pyspark, parquet tables in a Derby-backed Hive metastore), through databricks_proxy.py.

The SQL the adapter emits meets Spark's parser and analyzer here: backtick identifiers, `:name` parameters bound by
Spark (EXECUTE IMMEDIATE), TIMESTAMP vs TIMESTAMP_NTZ comparison under `SET TIME ZONE 'UTC'`, and Spark's own error
classes for a missing table, schema or column.

What this tier does not cover (the DuckDB stand-in of test_warehouse_databricks.py keeps those):
- a warehouse that warms up (503 + Retry-After), 403/404 answers of the gateway, Unity Catalog grants
  (INSUFFICIENT_PERMISSIONS: open-source Spark has no grants);
- Unity Catalog's three-level namespace: the catalog is Spark's `spark_catalog`;
- the Databricks gateway itself: TLS, OAuth, cloud fetch, LZ4, direct results, server-side async polling (the proxy
  runs each statement synchronously) and the Databricks-only SQL (row filters, column masks); VARIANT is Spark 4's
  own, and the proxy sends it as its JSON text like a SQL warehouse;
- a STRUCT PAYLOAD has every field in every row (a field a row leaves out is NULL, sent as null) and a MAP one
  value type, so the whole catalog contract (an unknown field, an invalid key, numbers and text in one field) goes
  through a VARIANT PAYLOAD, and the STRUCT one (with an ARRAY and a MAP of MAPs) through its valid rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import catalog_contract
import pytest
from conftest import SPARK_HTTP_PATH as HTTP_PATH
from conftest import SPARK_TOKEN as TOKEN
from contract_rows import ROWS
from databricks_proxy import DatabricksProxy
from sources import Source, integration_spec
from test_contract import _payload_text, assert_contract_delivered
from test_contract import braze as braze  # the Braze emulator fixture

from cdi_operator.api.models import CdiIntegrationSpec, DatabricksSpec, WarehouseCredentialSpec
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller.connection import check_credential, check_integration
from cdi_operator.warehouses import FailureReason, ReadWindow, WarehouseError
from cdi_operator.warehouses import databricks as adapter
from cdi_operator.warehouses.databricks import DatabricksWarehouse

pytestmark = pytest.mark.spark

CATALOG = "spark_catalog"
SECRET = ("dbx", "token")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def schema(spark_proxy: DatabricksProxy, spark_admin: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(adapter.ENDPOINT_ENV, spark_proxy.url)
    name = f"t_{uuid.uuid4().hex[:10]}"
    spark_admin.execute(f"CREATE SCHEMA {CATALOG}.{name}")
    yield name
    spark_admin.execute(f"DROP SCHEMA {CATALOG}.{name} CASCADE")


@pytest.fixture
def admin(spark_admin: Any) -> Any:
    return spark_admin


def literal(value: Any) -> str:
    """A Spark SQL literal of a Python test value."""
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return f"TIMESTAMP_NTZ'{value.isoformat(sep=' ')}'"
        return f"TIMESTAMP'{value.astimezone(UTC).isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, Decimal):
        return f"{value}BD"
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def create(admin: Any, table: str, columns: str, rows: list[list[Any]] | None = None, values: str = "") -> None:
    """A parquet table; `rows` as Python values, or `values` as Spark SQL row expressions."""
    admin.execute(f"CREATE TABLE {table} ({columns}) USING parquet")
    tuples = values or ", ".join("(" + ", ".join(literal(v) for v in row) + ")" for row in rows or [])
    if tuples:
        admin.execute(f"INSERT INTO {table} VALUES {tuples}")


def spec() -> DatabricksSpec:
    return DatabricksSpec.model_validate(
        {
            "serverHostname": "127.0.0.1",
            "httpPath": HTTP_PATH,
            "catalog": CATALOG,
            "accessTokenSecretRef": {"name": SECRET[0], "key": SECRET[1]},
        }
    )


def open_warehouse(token: str = TOKEN) -> DatabricksWarehouse:
    return adapter.connect(spec(), {SECRET: token})


def read_all(
    wh: DatabricksWarehouse, table: list[str], columns: list[str], window: ReadWindow, chunk: int
) -> list[Any]:
    rows: list[Any] = []
    for part in wh.read_changes(table, columns, "UPDATED_AT", window, chunk):
        assert 0 < len(part) <= chunk
        rows.extend(part)
    return rows


def spark_source(schema: str) -> Source:
    return Source("databricks", {"token": TOKEN, "http_path": HTTP_PATH, "catalog": CATALOG, "schema": schema})


def create_contract_in_spark(admin: Any, schema: str) -> None:
    create(
        admin,
        f"{schema}.contract",
        "UPDATED_AT TIMESTAMP, EXTERNAL_ID STRING, ALIAS_NAME STRING, ALIAS_LABEL STRING, BRAZE_ID STRING, "
        "EMAIL STRING, PHONE STRING, PAYLOAD STRING",
        [_payload_text(r) for r in ROWS],
    )


def create_catalog_in_spark(admin: Any, schema: str) -> None:
    """The catalog contract table with PAYLOAD as VARIANT (Spark 4's semi-structured type, Databricks' too): a field
    a row lacks stays absent, and one field may hold a number in one row and text in another."""
    values = ", ".join(
        f"({literal(t)}, {literal(i)}, {'NULL' if p is None else f'parse_json({literal(p)})'}, {literal(d)})"
        for t, i, p, d in catalog_contract.text_rows()
    )
    create(admin, f"{schema}.{catalog_contract.TABLE}", CATALOG_COLUMNS.format(payload="VARIANT"), values=values)


CATALOG_COLUMNS = "UPDATED_AT TIMESTAMP, ID STRING, PAYLOAD {payload}, DELETED BOOLEAN"


def test_contract_through_spark_sql(schema: str, admin: Any, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_contract_in_spark(admin, schema)
    assert_contract_delivered(spark_source(schema), braze, tmp_path)


def test_catalog_contract_with_a_variant_payload(schema: str, admin: Any, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_catalog_in_spark(admin, schema)
    catalog_contract.assert_catalog_delivered(spark_source(schema), braze, tmp_path)


def test_catalog_items_from_a_struct_payload_with_a_map(
    schema: str, admin: Any, braze: BrazeEmulator, tmp_path: Path
) -> None:
    """PAYLOAD as a STRUCT (with an ARRAY and a MAP of MAPs inside): the catalog contract's valid rows. A STRUCT has
    every field in every row, so a field a row leaves out arrives as null: the whole contract, with its unknown
    field and its invalid key, needs a VARIANT (above) or JSON text."""
    struct = "name STRING, price DOUBLE, tags ARRAY<STRING>, spec MAP<STRING, MAP<STRING, INT>>, in_stock BOOLEAN"
    rows = [r for r in catalog_contract.text_rows() if r[1] in ("sku-1", "sku-2", "sku-3", "sku-4")]
    values = ", ".join(
        f"({literal(t)}, {literal(i)}, {'NULL' if p is None else f'from_json({literal(p)}, {literal(struct)})'}, "
        f"{literal(d)})"
        for t, i, p, d in rows
    )
    create(
        admin, f"{schema}.{catalog_contract.TABLE}", CATALOG_COLUMNS.format(payload=f"STRUCT<{struct}>"), values=values
    )

    result = catalog_contract.sync_catalog(spark_source(schema), braze, tmp_path)

    assert result.exit_code == 0, result.stdout
    every_field = dict.fromkeys(("name", "price", "tags", "spec", "in_stock"))
    assert braze.catalog_items(catalog_contract.CATALOG) == {
        item: {**every_field, **fields} for item, fields in catalog_contract.EXPECTED_ITEMS.items()
    }
    assert result.record["rowErrors"] == []


def test_nested_decimal_date_and_timestamp_types(schema: str, admin: Any) -> None:
    table = f"{schema}.typed"
    create(
        admin,
        table,
        "UPDATED_AT TIMESTAMP_NTZ, EXTERNAL_ID STRING, "
        "PAYLOAD STRUCT<plan: STRING, price: DECIMAL(10,2), since: DATE, seen: TIMESTAMP, "
        "tags: ARRAY<STRING>, scores: MAP<STRING, INT>, `bad key`: STRUCT<n: BIGINT>>, "
        "`odd ``col`` name` DECIMAL(38,0), DAY DATE",
        values=(
            "(TIMESTAMP_NTZ'2026-03-01 12:00:01', 'u-1', named_struct('plan', 'pro', 'price', 9.90BD, "
            "'since', DATE'2025-12-31', 'seen', TIMESTAMP'2026-02-01 08:30:00.123456+00:00', "
            "'tags', array('a', 'b'), 'scores', map('x', 1, 'y', 2), 'bad key', named_struct('n', 1000000000000)), "
            "12345678901234567890123456789012345678BD, DATE'2026-03-01'), "
            "(TIMESTAMP_NTZ'2026-03-01 12:00:02', 'u-2', NULL, NULL, NULL)"
        ),
    )
    wh = open_warehouse()
    try:
        described = wh.describe([schema, "typed"])
        types = {c.name: c.type for c in described.columns}
        assert types["UPDATED_AT"] == "TIMESTAMP" and types["PAYLOAD"] == "STRUCT"
        assert types["odd `col` name"] == "DECIMAL" and types["DAY"] == "DATE"
        window = ReadWindow(since=T0, until=T0 + timedelta(seconds=5))
        rows = read_all(wh, [schema, "typed"], ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], window, 10)
        preview = wh.preview([schema, "typed"], ["odd `col` name", "DAY"], 5)
    finally:
        wh.close()
    assert [r[0] for r in rows] == [T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)], "NTZ taken as UTC"
    assert rows[0][2] == {
        "plan": "pro",
        "price": 9.9,
        "since": "2025-12-31",
        "seen": "2026-02-01T08:30:00.123000+00:00",  # to_json() keeps milliseconds
        "tags": ["a", "b"],
        "scores": {"x": 1, "y": 2},
        "bad key": {"n": 10**12},
    }
    assert rows[1][2] is None
    assert preview == [
        {"odd `col` name": None, "DAY": None},
        {"odd `col` name": Decimal("12345678901234567890123456789012345678"), "DAY": date(2026, 3, 1)},
    ]


def test_map_payload_and_date_updated_at(schema: str, admin: Any) -> None:
    create(
        admin,
        f"{schema}.by_day",
        "UPDATED_AT DATE, EXTERNAL_ID STRING, PAYLOAD MAP<STRING, STRING>",
        values="(DATE'2026-03-01', 'u-1', map('plan', 'pro')), (DATE'2026-03-02', 'u-2', map('plan', 'free'))",
    )
    wh = open_warehouse()
    try:
        rows = read_all(
            wh,
            [schema, "by_day"],
            ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"],
            ReadWindow(since=None, until=datetime(2026, 3, 1, 23, tzinfo=UTC)),
            10,
        )
    finally:
        wh.close()
    assert rows == [(datetime(2026, 3, 1, tzinfo=UTC), "u-1", {"plan": "pro"})]


def test_window_bound_by_spark_and_paged_past_ten_thousand_rows(schema: str, admin: Any) -> None:
    admin.execute(
        f"CREATE TABLE {schema}.users USING parquet AS SELECT "
        "timestamp_seconds(unix_seconds(TIMESTAMP'2026-03-01 12:00:00+00:00') + id DIV 2) AS UPDATED_AT, "
        "concat('u-', id) AS EXTERNAL_ID, to_json(named_struct('n', id)) AS PAYLOAD FROM range(30000)"
    )
    wh = open_warehouse()
    try:
        window = ReadWindow(since=T0 + timedelta(seconds=100), until=T0 + timedelta(seconds=12_599))
        rows = read_all(wh, [schema, "users"], ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], window, 4000)
        after = wh.count_after([schema, "users"], "UPDATED_AT", T0 + timedelta(seconds=14_998))
        undated = wh.count_undated([schema, "users"], "UPDATED_AT")
    finally:
        wh.close()
    assert len(rows) == (12_599 - 100 + 1) * 2, "both bounds inclusive, and every page past 10,000 rows"
    stamps = [r[0] for r in rows]
    assert stamps == sorted(stamps) and stamps[0] == T0 + timedelta(seconds=100)
    assert all(s.tzinfo is UTC for s in stamps)
    assert json.loads(rows[0][2]) == {"n": 200}
    assert (after, undated) == (2, 0)


# --- verdicts Spark can express ---------------------------------------------------------------------------------


def integration(schema: str, table: str) -> CdiIntegrationSpec:
    return integration_spec({"catalog": CATALOG, "schema": schema, "table": table})


def credential() -> WarehouseCredentialSpec:
    return WarehouseCredentialSpec(type="databricks", databricks=spec())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("columns", "table", "reason"),
    [
        ("UPDATED_AT TIMESTAMP, EXTERNAL_ID STRING, PAYLOAD STRING", "missing", FailureReason.TABLE_MISSING),
        ("UPDATED_AT STRING, EXTERNAL_ID STRING, PAYLOAD STRING", "users", FailureReason.COLUMN_TYPE),
        ("EXTERNAL_ID STRING, PAYLOAD STRING", "users", FailureReason.COLUMN_MISSING),
    ],
)
def test_connection_test_verdicts(schema: str, admin: Any, columns: str, table: str, reason: FailureReason) -> None:
    create(admin, f"{schema}.users", columns, [])
    outcome = check_integration(credential(), {SECRET: TOKEN}, integration(schema, table))
    assert (outcome.result, outcome.reason) == ("Failed", reason.value), outcome.message


def test_missing_schema_and_wrong_token(schema: str) -> None:
    outcome = check_integration(credential(), {SECRET: TOKEN}, integration("no_such_schema", "users"))
    assert (outcome.reason, "no_such_schema" in outcome.message) == (FailureReason.DATABASE_MISSING.value, True)
    assert check_credential(credential(), {SECRET: TOKEN}).passed
    refused = check_credential(credential(), {SECRET: "dapi-wrong"})
    assert refused.reason == FailureReason.AUTH_FAILED.value, refused.message
    with pytest.raises(WarehouseError) as info:
        open_warehouse("dapi-wrong")
    assert "dapi-wrong" not in str(info.value)
