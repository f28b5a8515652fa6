"""The `googlesql` tier: the BigQuery adapter through the official google-cloud-bigquery client against goccy's
bigquery-emulator (bigquery_emulator.py), whose GoogleSQL analyzer is the one BigQuery's SQL is defined by.

The SQL the adapter emits meets GoogleSQL's parser and strict typing here: backtick paths, typed @parameters
(TIMESTAMP with microseconds, DATE for a DATE column: GoogleSQL refuses to compare across types), JSON / RECORD /
REPEATED / NUMERIC values, `tables.get` schemas and paging through jobs.getQueryResults past 30,000 rows.

What this tier does not cover (the DuckDB stand-in of test_warehouse_bigquery.py keeps those):
- error classification: the emulator answers a failed query with 500 `jobInternalError` and an unknown table with
  its own text, so only the verdicts that come from `tables.get` (missing table or dataset) and from the schema
  (missing column, wrong type) are checked here; the client gets a short retry deadline so a 500 cannot hang a test;
- DATETIME UPDATED_AT: the adapter binds a DATETIME column's bounds as typed DATETIME parameters, which is what
  BigQuery needs (GoogleSQL has no implicit TIMESTAMP/DATETIME comparison), but the emulator gives every DATETIME
  parameter the type TIMESTAMP: `SELECT @s` with `{"parameterType": {"type": "DATETIME"}, "parameterValue":
  {"value": "2026-03-01 12:00:02"}}` returns the TIMESTAMP `1772366402.000000`, and `WHERE U >= @s` on a DATETIME
  column fails with "No matching signature for operator >= for argument types: DATETIME, TIMESTAMP" (v0.8.1's
  internal/contentdata/repository.go parses the value into a Go time.Time, which googlesqlite binds as TIMESTAMP).
  A DATETIME literal or `CAST(@s AS DATETIME)` of a STRING parameter works there, but the adapter keeps the typed
  parameter BigQuery documents; the DATETIME UPDATED_AT is checked on the stand-in, by the parameter type sent;
- a NULL RECORD that holds a REPEATED field, or a REPEATED field left out of a row (BigQuery stores []): the
  emulator fails the query ("invalid value type <nil> for ARRAY column"), so the RECORD rows give every field;
- a RECORD PAYLOAD has every field in every row: a field a row leaves out arrives as null, so the catalog contract
  with its unknown field and invalid key goes through a JSON PAYLOAD, and the RECORD one through its valid rows;
- authentication and IAM: the emulator takes any request; permissions, job polling (jobs finish at once), quotas,
  locations, partitioned tables and the Storage Read API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import catalog_contract
import pytest
from bigquery_emulator import BigQueryEmulator
from contract_rows import ROWS
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from sources import Source, integration_spec
from test_contract import assert_contract_delivered
from test_contract import braze as braze  # the Braze emulator fixture
from test_warehouse_bigquery import PROJECT, SECRET, sa_key, spec

from cdi_operator.api.models import CdiIntegrationSpec, WarehouseCredentialSpec
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller.connection import check_integration
from cdi_operator.warehouses import FailureReason, ReadWindow
from cdi_operator.warehouses import bigquery as bq

# A query the emulator fails can leave its job without results, so that the client polls for ever: bound each test.
pytestmark = [pytest.mark.googlesql, pytest.mark.timeout(180)]
COLUMNS_DAY = ["UPDATED_AT", "EXTERNAL_ID"]
__all__ = ["sa_key"]  # the service-account key fixture

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
FAR = datetime(2030, 1, 1, tzinfo=UTC)
CONTRACT_SCHEMA = [
    bigquery.SchemaField("UPDATED_AT", "TIMESTAMP"),
    *(bigquery.SchemaField(n, "STRING") for n in ("EXTERNAL_ID", "ALIAS_NAME", "ALIAS_LABEL", "BRAZE_ID", "EMAIL")),
    bigquery.SchemaField("PHONE", "STRING"),
    bigquery.SchemaField("PAYLOAD", "JSON"),
]


@pytest.fixture
def client(bigquery_emulator: BigQueryEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[bigquery.Client]:
    """The tests' own client (setup), and the adapter pointed at the emulator with a short retry deadline."""
    monkeypatch.setenv(bq.ENDPOINT_ENV, bigquery_emulator.url)
    monkeypatch.setattr(bq, "RETRY_SECONDS", 3.0)
    setup = setup_client(bigquery_emulator.url)
    yield setup
    setup.close()  # type: ignore[no-untyped-call]


def setup_client(url: str) -> bigquery.Client:
    """A client of the tests' own, for creating datasets and tables."""
    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=url),
    )


@pytest.fixture
def dataset(client: bigquery.Client, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "ds_" + request.node.name.split("[")[0].removeprefix("test_")[:40]
    client.create_dataset(name, exists_ok=True)
    yield name
    client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def table(
    client: bigquery.Client, dataset: str, name: str, schema: list[bigquery.SchemaField], rows: list[Any]
) -> None:
    client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.{name}", schema=schema))
    if rows:
        errors = client.insert_rows_json(f"{PROJECT}.{dataset}.{name}", rows)
        assert not errors, errors


def contract_json(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip([f.name for f in CONTRACT_SCHEMA], row, strict=True))
    values["UPDATED_AT"] = values["UPDATED_AT"] and values["UPDATED_AT"].isoformat()
    values["PAYLOAD"] = json.dumps(values["PAYLOAD"], ensure_ascii=False)
    return values


def open_warehouse(key: str) -> bq.BigQueryWarehouse:
    return bq.connect(spec(), {SECRET: key})


def googlesql_source(dataset: str, sa_key: str) -> Source:
    return Source("bigquery", {"project": PROJECT, "schema": dataset, "key_json": json.dumps(sa_key)})


def create_contract_in_googlesql(client: bigquery.Client, dataset: str) -> None:
    table(client, dataset, "contract", CONTRACT_SCHEMA, [contract_json(r) for r in ROWS])


def create_catalog_in_googlesql(client: bigquery.Client, dataset: str) -> None:
    """The catalog contract table with PAYLOAD as JSON (a field a row lacks stays absent)."""
    schema = [
        bigquery.SchemaField("UPDATED_AT", "TIMESTAMP"),
        bigquery.SchemaField("ID", "STRING"),
        bigquery.SchemaField("PAYLOAD", "JSON"),
        bigquery.SchemaField("DELETED", "BOOL"),
    ]
    rows = [
        {"UPDATED_AT": t and t.isoformat(), "ID": i, "PAYLOAD": p, "DELETED": d}
        for t, i, p, d in catalog_contract.text_rows()
    ]
    table(client, dataset, catalog_contract.TABLE, schema, rows)


def test_contract_through_googlesql(
    client: bigquery.Client, dataset: str, sa_key: str, braze: BrazeEmulator, tmp_path: Path
) -> None:
    create_contract_in_googlesql(client, dataset)
    assert_contract_delivered(googlesql_source(dataset, sa_key), braze, tmp_path)


def test_catalog_contract_with_a_json_payload(
    client: bigquery.Client, dataset: str, sa_key: str, braze: BrazeEmulator, tmp_path: Path
) -> None:
    create_catalog_in_googlesql(client, dataset)
    catalog_contract.assert_catalog_delivered(googlesql_source(dataset, sa_key), braze, tmp_path)


def test_catalog_items_from_a_record_payload(
    client: bigquery.Client, dataset: str, sa_key: str, braze: BrazeEmulator, tmp_path: Path
) -> None:
    """PAYLOAD as a RECORD (with REPEATED and nested RECORD fields): the catalog contract's valid rows. A RECORD has
    every field in every row, so a field a row leaves out arrives as null (a REPEATED one as []): the whole contract,
    with its unknown field and its invalid key, needs JSON (above)."""
    record = [
        bigquery.SchemaField("name", "STRING"),
        bigquery.SchemaField("price", "FLOAT64"),
        bigquery.SchemaField("tags", "STRING", mode="REPEATED"),
        bigquery.SchemaField(
            "spec",
            "RECORD",
            fields=[
                bigquery.SchemaField(
                    "size", "RECORD", fields=[bigquery.SchemaField("w", "INT64"), bigquery.SchemaField("h", "INT64")]
                )
            ],
        ),
        bigquery.SchemaField("in_stock", "BOOL"),
    ]
    schema = [
        bigquery.SchemaField("UPDATED_AT", "TIMESTAMP"),
        bigquery.SchemaField("ID", "STRING"),
        bigquery.SchemaField("PAYLOAD", "RECORD", fields=record),
        bigquery.SchemaField("DELETED", "BOOL"),
    ]
    # Every row's REPEATED field is given, [] at least, and the deleting row's PAYLOAD (never read) is not NULL: the
    # emulator stores an absent one as NULL and then fails the query ("invalid value type <nil> for ARRAY column");
    # BigQuery stores [].
    rows = [
        {"UPDATED_AT": t.isoformat(), "ID": i, "PAYLOAD": {"tags": [], **(p or {})}, "DELETED": d}
        for t, i, p, d in catalog_contract.ROWS
        if i in ("sku-1", "sku-2", "sku-3", "sku-4")
    ]
    table(client, dataset, catalog_contract.TABLE, schema, rows)

    result = catalog_contract.sync_catalog(googlesql_source(dataset, sa_key), braze, tmp_path)

    assert result.exit_code == 0, result.stdout
    every_field = {"name": None, "price": None, "tags": [], "spec": None, "in_stock": None}
    assert braze.catalog_items(catalog_contract.CATALOG) == {
        item: {**every_field, **fields} for item, fields in catalog_contract.EXPECTED_ITEMS.items()
    }
    assert result.record["rowErrors"] == []


def test_record_repeated_numeric_and_microsecond_bounds(client: bigquery.Client, dataset: str, sa_key: str) -> None:
    schema = [
        bigquery.SchemaField("UPDATED_AT", "TIMESTAMP"),
        bigquery.SchemaField("EXTERNAL_ID", "STRING"),
        bigquery.SchemaField(
            "PAYLOAD",
            "RECORD",
            fields=[
                bigquery.SchemaField("plan", "STRING"),
                bigquery.SchemaField("price", "NUMERIC"),
                bigquery.SchemaField("since", "DATE"),
                bigquery.SchemaField("tags", "STRING", mode="REPEATED"),
            ],
        ),
    ]
    stamps = [T0 + timedelta(microseconds=us) for us in (1, 2, 3)]
    table(
        client,
        dataset,
        "typed",
        schema,
        [
            {
                "UPDATED_AT": s.isoformat(),
                "EXTERNAL_ID": f"u-{i}",
                "PAYLOAD": {"plan": "pro", "price": "9.90", "since": "2025-12-31", "tags": ["a", "b"]},
            }
            for i, s in enumerate(stamps)
        ],
    )
    wh = open_warehouse(sa_key)
    try:
        described = {c.name: c.type for c in wh.describe([dataset, "typed"]).columns}
        chunks = list(
            wh.read_changes(
                [dataset, "typed"],
                ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"],
                "UPDATED_AT",
                ReadWindow(stamps[1], FAR),
                10,
            )
        )
    finally:
        wh.close()
    assert described == {"UPDATED_AT": "TIMESTAMP", "EXTERNAL_ID": "STRING", "PAYLOAD": "STRUCT"}
    rows = [r for c in chunks for r in c]
    assert [r[0] for r in rows] == stamps[1:], "a TIMESTAMP parameter keeps its microseconds"
    assert rows[0][2] == {"plan": "pro", "price": Decimal("9.90"), "since": date(2025, 12, 31), "tags": ["a", "b"]}


def test_a_date_column_is_compared_with_a_date_parameter(client: bigquery.Client, dataset: str, sa_key: str) -> None:
    schema = [bigquery.SchemaField("UPDATED_AT", "DATE"), bigquery.SchemaField("EXTERNAL_ID", "STRING")]
    rows = [{"UPDATED_AT": day, "EXTERNAL_ID": f"u-{day}"} for day in ("2026-02-28", "2026-03-01", "2026-03-02")]
    table(client, dataset, "by_day", schema, rows)
    wh = open_warehouse(sa_key)
    try:
        window = ReadWindow(T0, T0 + timedelta(hours=6))  # bounds on 2026-03-01: DATE parameters of that day
        got = [r for c in wh.read_changes([dataset, "by_day"], COLUMNS_DAY, "UPDATED_AT", window, 10) for r in c]
    finally:
        wh.close()
    assert got == [(datetime(2026, 3, 1, tzinfo=UTC), "u-2026-03-01")]


def test_pages_past_thirty_thousand_rows(client: bigquery.Client, dataset: str, sa_key: str) -> None:
    client.query(
        f"CREATE TABLE `{PROJECT}.{dataset}.users` AS SELECT "
        "TIMESTAMP_ADD(TIMESTAMP '2026-03-01 12:00:00+00', INTERVAL DIV(x, 2) SECOND) AS UPDATED_AT, "
        "CONCAT('u-', CAST(x AS STRING)) AS EXTERNAL_ID, TO_JSON(STRUCT(x AS n)) AS PAYLOAD "
        "FROM UNNEST(GENERATE_ARRAY(0, 30999)) AS x"
    ).result()
    wh = open_warehouse(sa_key)
    try:
        chunks = list(
            wh.read_changes(
                [dataset, "users"], ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT", ReadWindow(None, FAR), 7000
            )
        )
        after = wh.count_after([dataset, "users"], "UPDATED_AT", T0 + timedelta(seconds=15_498))
        undated = wh.count_undated([dataset, "users"], "UPDATED_AT")
    finally:
        wh.close()
    rows = [r for c in chunks for r in c]
    assert len(rows) == 31_000 and all(0 < len(c) <= 7000 for c in chunks)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    last = rows[-1][2] if isinstance(rows[-1][2], dict) else json.loads(rows[-1][2])
    assert last["n"] in (30_998, 30_999), "rows tied on UPDATED_AT may come in either order"
    assert (after, undated) == (2, 0)


@pytest.mark.parametrize(
    ("schema", "source_table", "reason"),
    [
        ([("UPDATED_AT", "TIMESTAMP"), ("EXTERNAL_ID", "STRING")], "missing", FailureReason.TABLE_MISSING),
        (
            [("UPDATED_AT", "STRING"), ("EXTERNAL_ID", "STRING"), ("PAYLOAD", "JSON")],
            "users",
            FailureReason.COLUMN_TYPE,
        ),
        ([("EXTERNAL_ID", "STRING"), ("PAYLOAD", "JSON")], "users", FailureReason.COLUMN_MISSING),
    ],
)
def test_connection_test_verdicts(
    client: bigquery.Client,
    dataset: str,
    sa_key: str,
    schema: list[tuple[str, str]],
    source_table: str,
    reason: FailureReason,
) -> None:
    table(client, dataset, "users", [bigquery.SchemaField(n, t) for n, t in schema], [])
    outcome = check_integration(credential(), {SECRET: sa_key}, integration(dataset, source_table))
    assert (outcome.result, outcome.reason) == ("Failed", reason.value), outcome.message
    missing_dataset = check_integration(credential(), {SECRET: sa_key}, integration("no_such_dataset", "users"))
    assert missing_dataset.reason == FailureReason.DATABASE_MISSING.value, missing_dataset.message


def integration(dataset: str, name: str) -> CdiIntegrationSpec:
    return integration_spec({"project": PROJECT, "dataset": dataset, "table": name})


def credential() -> WarehouseCredentialSpec:
    return WarehouseCredentialSpec(type="bigquery", bigquery=spec())  # type: ignore[arg-type]
