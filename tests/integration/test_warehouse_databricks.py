"""The Databricks adapter through the real `databricks-sql-connector`, against the Thrift stand-in
(databricks_standin.py: DuckDB behind TCLIService over HTTP on loopback).

What the stand-in does not cover, compared with a real Databricks SQL warehouse:
- TLS and the real host: the connector talks plain HTTP to 127.0.0.1 through `CDI_DATABRICKS_ENDPOINT` (the
  connector's `_connection_uri`), so certificates, proxies and the https://serverHostname:443 URI are not exercised
  (the adapter's TCP pre-probe is, against the endpoint);
- OAuth (M2M/U2M) and token federation: only personal access tokens (bearer) are checked;
- cloud fetch (results as presigned cloud-storage links), LZ4-compressed Arrow batches, direct results in the
  ExecuteStatement reply, asynchronous PENDING/RUNNING polling and statement cancellation on the server side;
- the SQL dialect: statements run on DuckDB after backtick and `:param` translation, so Spark-only syntax, Unity
  Catalog grants (permission errors are simulated for listed tables), views with row filters, column masks, VARIANT,
  TIMESTAMP_NTZ metadata (`Spark:DataType:SqlName`) and Databricks' exact error texts for every case are not real;
- a warehouse that starts: the 503 + Retry-After answers are what the connector retries, but the real gateway's
  timing (minutes) and its other answers (e.g. 429 rate limits, "warehouse is stopped" for disabled auto-start) are not;
- HTTP 403 for a wrong workspace, 404 for a wrong httpPath are simulated with Databricks' reason-phrase header only.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import catalog_contract
import pytest
from contract_rows import ROWS
from databricks_standin import HTTP_PATH, TOKEN, DatabricksStandin
from sources import Source
from test_contract import _payload_text, assert_contract_delivered
from test_contract import braze as braze  # the Braze emulator fixture

from cdi_operator.api.models import DatabricksSpec, WarehouseCredentialSpec
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller.connection import check_credential
from cdi_operator.controller.settings import OperatorSettings
from cdi_operator.warehouses import FailureReason, ReadWindow, WarehouseError
from cdi_operator.warehouses import databricks as adapter
from cdi_operator.warehouses.databricks import DatabricksWarehouse, quote_ident

CATALOG = "workspace"
SECRET = ("dbx", "token")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def dbx(monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabricksStandin]:
    with DatabricksStandin(catalog=CATALOG) as standin:
        monkeypatch.setenv(adapter.ENDPOINT_ENV, standin.url)
        monkeypatch.setattr(adapter, "WARM_UP_POLL_SECONDS", 5.0)  # the connector's floor
        standin.execute("CREATE SCHEMA sales")
        yield standin


def spec(catalog: str | None = CATALOG, http_path: str = HTTP_PATH) -> DatabricksSpec:
    fields: dict[str, Any] = {
        "serverHostname": "127.0.0.1",
        "httpPath": http_path,
        "accessTokenSecretRef": {"name": SECRET[0], "key": SECRET[1]},
    }
    if catalog:
        fields["catalog"] = catalog
    return DatabricksSpec.model_validate(fields)


def open_warehouse(token: str = TOKEN, **overrides: Any) -> DatabricksWarehouse:
    return adapter.connect(spec(**overrides), {SECRET: token})


@pytest.fixture
def wh(dbx: DatabricksStandin) -> Iterator[DatabricksWarehouse]:
    warehouse = open_warehouse()
    yield warehouse
    warehouse.close()


def users(dbx: DatabricksStandin, n: int, *, payload_type: str = "VARCHAR", ts_type: str = "TIMESTAMPTZ") -> None:
    dbx.execute(
        f"CREATE TABLE sales.users (UPDATED_AT {ts_type}, EXTERNAL_ID VARCHAR, PAYLOAD {payload_type}, OTHER INTEGER)"
    )
    if n:
        dbx.execute(
            "INSERT INTO sales.users SELECT TIMESTAMPTZ '2026-03-01 12:00:00+00' + to_seconds(i // 2), "
            "'u-' || i, '{\"n\": ' || i || '}', i FROM range(?) r(i)",
            [n],
        )


def read_all(wh: DatabricksWarehouse, window: ReadWindow, chunk: int = 1000, table: str = "users") -> list[Any]:
    rows: list[Any] = []
    for part in wh.read_changes(
        [CATALOG, "sales", table], ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT", window, chunk
    ):
        assert 0 < len(part) <= chunk
        rows.extend(part)
    return rows


# --- describe, read, count, preview -----------------------------------------------------------------------------


def test_describe(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 0)
    described = wh.describe([CATALOG, "sales", "users"])
    assert described.name == "workspace.sales.users"
    assert [(c.name, c.type) for c in described.columns] == [
        ("UPDATED_AT", "TIMESTAMP"),
        ("EXTERNAL_ID", "STRING"),
        ("PAYLOAD", "STRING"),
        ("OTHER", "INT"),
    ]
    # Without a catalog in the source, the credential's catalog names the table.
    assert wh.describe(["sales", "users"]).name == "workspace.sales.users"


def test_read_window_inclusive_ordered_chunked_and_bound(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 2000)  # two rows per second, from T0
    window = ReadWindow(since=T0 + timedelta(seconds=100), until=T0 + timedelta(seconds=600))
    rows = read_all(wh, window, chunk=333)
    assert len(rows) == (600 - 100 + 1) * 2, "both bounds are inclusive"
    stamps = [r[0] for r in rows]
    assert stamps == sorted(stamps)
    assert stamps[0] == T0 + timedelta(seconds=100) and stamps[-1] == T0 + timedelta(seconds=600)
    assert all(s.tzinfo is not None and s.utcoffset() == timedelta(0) for s in stamps)
    assert json.loads(rows[0][2]) == {"n": 200}, "a STRING payload stays JSON text"
    # The bounds travelled as named parameters, not as text in the SQL.
    sql, params = next((s, p) for s, p in dbx.statements if "FROM `workspace`.`sales`.`users` WHERE" in s)
    assert ":since" in sql and ":until" in sql and "2026" not in sql
    assert params == {"since": "2026-03-01 12:01:40+00:00", "until": "2026-03-01 12:10:00+00:00"}
    assert len(read_all(wh, ReadWindow(since=None, until=T0 + timedelta(seconds=1)))) == 4


def test_window_bounds_in_another_zone_are_compared_as_utc(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 10)
    berlin = (T0 + timedelta(seconds=2)).astimezone(ZoneInfo("Europe/Berlin"))  # 13:00:02+01:00
    rows = read_all(wh, ReadWindow(since=berlin, until=berlin))
    assert sorted(r[1] for r in rows) == ["u-4", "u-5"]


def test_timestamp_ntz_is_taken_as_utc(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 6, ts_type="TIMESTAMP")
    rows = read_all(wh, ReadWindow(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=2)))
    assert [r[0] for r in rows] == [T0 + timedelta(seconds=s) for s in (1, 1, 2, 2)]
    assert all(r[0].tzinfo is UTC for r in rows)


def test_struct_and_map_payloads_become_dicts(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    dbx.execute(
        "CREATE TABLE sales.nested (UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, "
        "PAYLOAD STRUCT(plan VARCHAR, score DOUBLE, tags VARCHAR[], address STRUCT(city VARCHAR), "
        "prefs MAP(VARCHAR, BOOLEAN), seen TIMESTAMPTZ))"
    )
    dbx.execute(
        "INSERT INTO sales.nested VALUES (TIMESTAMPTZ '2026-03-01 12:00:00+00', 'u-1', {'plan': 'pro', 'score': 1.5, "
        "'tags': ['a', 'b'], 'address': {'city': 'Lisbon'}, 'prefs': MAP {'email': true}, "
        "'seen': TIMESTAMPTZ '2026-02-01 00:00:00+00'})"
    )
    dbx.execute(
        "CREATE TABLE sales.mapped (UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, PAYLOAD MAP(VARCHAR, VARCHAR))"
    )
    dbx.execute(
        "INSERT INTO sales.mapped VALUES "
        "(TIMESTAMPTZ '2026-03-01 12:00:00+00', 'u-2', MAP {'plan': 'pro', 'tier': 'x'}), "
        "(TIMESTAMPTZ '2026-03-01 12:00:01+00', 'u-3', NULL)"
    )
    window = ReadWindow(since=None, until=T0 + timedelta(hours=1))
    assert wh.describe([CATALOG, "sales", "nested"]).column("payload").type == "STRUCT"  # type: ignore[union-attr]
    [row] = read_all(wh, window, table="nested")
    assert row[2] == {
        "plan": "pro",
        "score": 1.5,
        "tags": ["a", "b"],
        "address": {"city": "Lisbon"},
        "prefs": {"email": True},
        "seen": "2026-02-01T00:00:00+00:00",
    }
    rows = read_all(wh, window, table="mapped")
    assert [r[2] for r in rows] == [{"plan": "pro", "tier": "x"}, None]


def test_quoting_of_odd_names(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    dbx.execute('CREATE SCHEMA "we`ird sch"')
    dbx.execute(
        'CREATE TABLE "we`ird sch"."ta`ble; DROP" (UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, PAYLOAD VARCHAR)'
    )
    dbx.execute("""INSERT INTO "we`ird sch"."ta`ble; DROP" VALUES (TIMESTAMPTZ '2026-03-01 12:00:00+00', 'u', '{}')""")
    assert quote_ident("a`b") == "`a``b`"
    table = [CATALOG, "we`ird sch", "ta`ble; DROP"]
    assert wh.describe(table).name == "workspace.we`ird sch.ta`ble; DROP"
    rows = list(wh.read_changes(table, ["UPDATED_AT", "EXTERNAL_ID"], "updated_at", ReadWindow(None, T0), 10))
    assert rows == [[(T0, "u")]]


def test_count_after_and_preview(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 100)
    table = [CATALOG, "sales", "users"]
    assert wh.count_after(table, "UPDATED_AT", T0 + timedelta(seconds=45)) == 8
    preview = wh.preview(table, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], 3)
    assert [p["EXTERNAL_ID"] for p in preview] in (["u-99", "u-98", "u-97"], ["u-98", "u-99", "u-97"])
    assert preview[0]["UPDATED_AT"] == T0 + timedelta(seconds=49)
    assert "LIMIT 3" in dbx.statements[-1][0], "the preview is bounded by the server, not by the client"


def test_updated_at_must_be_a_timestamp(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 1, ts_type="VARCHAR")
    with pytest.raises(WarehouseError) as err:
        read_all(wh, ReadWindow(None, T0))
    assert err.value.reason is FailureReason.COLUMN_TYPE


# --- verdicts -------------------------------------------------------------------------------------------------


def _error(**kwargs: Any) -> WarehouseError:
    with pytest.raises(WarehouseError) as err:
        warehouse = open_warehouse(**kwargs)
        try:
            warehouse.describe([CATALOG, "sales", "users"])
        finally:
            warehouse.close()
    return err.value


def test_wrong_token_is_auth_failed_and_never_echoed(dbx: DatabricksStandin) -> None:
    err = _error(token="dapi-wrong-secret-value")
    assert err.reason is FailureReason.AUTH_FAILED
    assert "Secret 'dbx' key 'token'" in err.message and "dapi-wrong-secret-value" not in str(err)


def test_forbidden_is_permission_denied(dbx: DatabricksStandin) -> None:
    dbx.forbidden_tokens.add("dapi-other-workspace")
    assert _error(token="dapi-other-workspace").reason is FailureReason.PERMISSION_DENIED


def test_wrong_http_path_is_warehouse_missing(dbx: DatabricksStandin) -> None:
    err = _error(http_path="/sql/1.0/warehouses/nope")
    assert err.reason is FailureReason.WAREHOUSE_MISSING and "httpPath" in err.message


def test_missing_table_schema_catalog(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    with pytest.raises(WarehouseError) as err:
        wh.describe([CATALOG, "sales", "nope"])
    assert err.value.reason is FailureReason.TABLE_MISSING and "workspace.sales.nope" in err.value.message
    with pytest.raises(WarehouseError) as err:
        wh.describe([CATALOG, "nope", "users"])
    assert err.value.reason is FailureReason.DATABASE_MISSING
    with pytest.raises(WarehouseError) as err:
        wh.describe(["nocatalog", "sales", "users"])
    assert err.value.reason is FailureReason.DATABASE_MISSING


def test_select_not_granted_is_permission_denied(dbx: DatabricksStandin, wh: DatabricksWarehouse) -> None:
    users(dbx, 1)
    dbx.denied_tables.add("workspace.sales.users")
    with pytest.raises(WarehouseError) as err:
        wh.describe([CATALOG, "sales", "users"])
    assert err.value.reason is FailureReason.PERMISSION_DENIED
    assert "GRANT SELECT ON TABLE workspace.sales.users" in err.value.message


def test_unreachable(dbx: DatabricksStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv(adapter.ENDPOINT_ENV, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    err = _error()
    assert err.reason is FailureReason.UNREACHABLE and f"127.0.0.1:{port}" in err.message
    assert time.monotonic() - started < 5, "refused at once by the TCP probe, not retried like a warm-up"


def test_unreachable_host_is_found_by_the_tcp_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(adapter.ENDPOINT_ENV, raising=False)
    monkeypatch.setattr(adapter, "HTTPS_PORT", _free_port())
    with pytest.raises(WarehouseError) as err:
        adapter.connect(spec(), {SECRET: TOKEN})
    assert err.value.reason is FailureReason.UNREACHABLE and "serverHostname" in err.value.message
    monkeypatch.setattr(adapter, "HTTPS_PORT", 443)
    bad = DatabricksSpec.model_validate(
        {
            "serverHostname": "no-such-host.invalid",
            "httpPath": HTTP_PATH,
            "accessTokenSecretRef": {"name": "dbx", "key": "token"},
        }
    )
    with pytest.raises(WarehouseError) as err:
        adapter.connect(bad, {SECRET: TOKEN})
    assert err.value.reason is FailureReason.UNREACHABLE and "cannot resolve" in err.value.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_warming_up_past_the_bounded_wait(dbx: DatabricksStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "WARM_UP_WAIT_SECONDS", 1.0)
    dbx.warm_up(60)
    started = time.monotonic()
    err = _error()
    assert err.reason is FailureReason.WARMING_UP and "next sync" in err.message
    assert time.monotonic() - started < 10


def test_slow_start_is_waited_for(dbx: DatabricksStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    users(dbx, 3)
    monkeypatch.setattr(adapter, "WARM_UP_WAIT_SECONDS", 30.0)
    dbx.warm_up(1.0)
    started = time.monotonic()
    warehouse = open_warehouse()
    try:
        assert len(warehouse.describe([CATALOG, "sales", "users"]).columns) == 4
    finally:
        warehouse.close()
    assert 1.0 <= time.monotonic() - started < 25


def test_the_default_tolerance_outlasts_a_five_minute_start() -> None:
    """A classic or pro warehouse takes 2-5 minutes to start: the adapter waits longer than that by default, and
    the operator's connection test longer still, so a start ends in success or WarmingUp, never in Timeout."""
    assert adapter.WARM_UP_WAIT_SECONDS >= 1.2 * 5 * 60
    settings = OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i"})
    assert settings.connection_test_timeout >= adapter.WARM_UP_WAIT_SECONDS + 2 * adapter.CONNECT_TIMEOUT_SECONDS


def test_connection_test_of_a_starting_warehouse_says_warming_up(
    dbx: DatabricksStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter, "WARM_UP_WAIT_SECONDS", 1.0)
    dbx.warm_up(60)
    credential = WarehouseCredentialSpec(type="databricks", databricks=spec())  # type: ignore[arg-type]
    outcome = check_credential(credential, {SECRET: TOKEN})
    assert (outcome.result, outcome.reason) == ("Failed", FailureReason.WARMING_UP.value), outcome.message


# --- the contract ------------------------------------------------------------------------------------------------


def test_databricks(dbx: DatabricksStandin, braze: BrazeEmulator, tmp_path: Path) -> None:
    source = Source(
        "databricks",
        {"standin": dbx, "catalog": CATALOG, "schema": "sales", "http_path": HTTP_PATH, "token": TOKEN},
    )
    source.create_table(
        "contract",
        "UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, ALIAS_NAME VARCHAR, ALIAS_LABEL VARCHAR, BRAZE_ID VARCHAR, "
        "EMAIL VARCHAR, PHONE VARCHAR, PAYLOAD VARCHAR",
        [_payload_text(r) for r in ROWS],
    )
    assert_contract_delivered(source, braze, tmp_path)


def test_databricks_catalog(dbx: DatabricksStandin, braze: BrazeEmulator, tmp_path: Path) -> None:
    """The catalog contract table (catalog_contract.py) with PAYLOAD as STRING."""
    source = Source(
        "databricks",
        {"standin": dbx, "catalog": CATALOG, "schema": "sales", "http_path": HTTP_PATH, "token": TOKEN},
    )
    source.create_table(
        catalog_contract.TABLE,
        "UPDATED_AT TIMESTAMPTZ, ID VARCHAR, PAYLOAD VARCHAR, DELETED BOOLEAN",
        catalog_contract.text_rows(),
    )
    catalog_contract.assert_catalog_delivered(source, braze, tmp_path)


def test_databricks_catalog_native_struct_and_map(dbx: DatabricksStandin, braze: BrazeEmulator, tmp_path: Path) -> None:
    """Catalog items from a native STRUCT PAYLOAD holding an array and a MAP."""
    source = Source(
        "databricks",
        {"standin": dbx, "catalog": CATALOG, "schema": "sales", "http_path": HTTP_PATH, "token": TOKEN},
    )
    source.execute(
        "CREATE TABLE sales.catalog_native (UPDATED_AT TIMESTAMPTZ, ID VARCHAR, "
        "PAYLOAD STRUCT(name VARCHAR, price DOUBLE, tags VARCHAR[], spec MAP(VARCHAR, INTEGER)), DELETED BOOLEAN)"
    )
    source.execute(
        "INSERT INTO sales.catalog_native VALUES "
        "(TIMESTAMPTZ '2026-03-01 12:00:01+00', 'sku-1', {'name': 'Lamp', 'price': 9.5, 'tags': ['a', 'b'], "
        "'spec': MAP {'w': 3, 'h': 4}}, false), "
        "(TIMESTAMPTZ '2026-03-01 12:00:02+00', 'sku-2', NULL, true)"
    )
    braze.create_catalog(catalog_contract.CATALOG, catalog_contract.FIELDS, items=[{"id": "sku-2"}])

    result = catalog_contract.sync_catalog(source, braze, tmp_path, "catalog_native")

    assert result.exit_code == 0, result.stdout
    assert braze.catalog_items(catalog_contract.CATALOG) == {
        "sku-1": {"id": "sku-1", "name": "Lamp", "price": 9.5, "tags": ["a", "b"], "spec": {"w": 3, "h": 4}}
    }
