"""The contract tables (contract_rows.py, catalog_contract.py) through five SQL engines side by side: the objects
that reach the Braze emulator from Spark SQL, GoogleSQL, fakesnow, PostgreSQL and DuckDB must be identical, byte for
byte as JSON.

Each tier's module checks its engine against EXPECTED_ATTRIBUTES and EXPECTED_ITEMS on its own; this test puts the
five deliveries next to each other, so a difference any engine's types make (a number sent as 12.0, a NULL field
sent where another engine leaves it out, a row error of another reason) fails with the engine and the object named.
Each engine keeps its native types: TIMESTAMPTZ / JSON in DuckDB, TIMESTAMPTZ / text in PostgreSQL, TIMESTAMP_TZ /
VARIANT in fakesnow, TIMESTAMP / STRING and VARIANT in Spark (parquet), TIMESTAMP / JSON in GoogleSQL. Spark and the
emulator are the session's (conftest.py), shared with their tiers' modules.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from catalog_contract import CATALOG, EXPECTED_ITEMS, sync_catalog
from contract_rows import EXPECTED_ATTRIBUTES, normalise
from snowflake_standin import SnowflakeStandIn, running_standin
from sources import BRAZE_KEY, Source
from test_contract import (
    create_catalog_in_duckdb,
    create_catalog_in_postgres,
    create_in_duckdb,
    create_in_postgres,
    sync_contract,
)
from test_warehouse_bigquery import sa_key
from test_warehouse_googlesql import (
    create_catalog_in_googlesql,
    create_contract_in_googlesql,
    googlesql_source,
    setup_client,
)
from test_warehouse_snowflake import create_catalog_in_snowflake, create_in_snowflake, source_in
from test_warehouse_spark import CATALOG as SPARK_CATALOG
from test_warehouse_spark import create_catalog_in_spark, create_contract_in_spark, spark_source

from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.warehouses import bigquery, databricks, snowflake

pytestmark = [pytest.mark.postgres, pytest.mark.spark, pytest.mark.googlesql, pytest.mark.timeout(900)]
__all__ = ["sa_key"]  # the service-account key fixture
REFERENCE = "duckdb"
IDENTIFIERS = ("external_id", "braze_id", "email", "phone")


@pytest.fixture(scope="module")
def snowflake_standin() -> Iterator[SnowflakeStandIn]:
    with running_standin() as server:
        yield server


def delivered(source: Source, tmp_path: Path) -> dict[str, Any]:
    """What reached a fresh Braze emulator from both contract tables of `source`, keyed by a name for each object:
    every attributes object, every catalog item, the row errors' reasons and each run's counts."""
    with BrazeEmulator(api_key=BRAZE_KEY) as braze:
        runs = {"attributes": sync_contract(source, braze, tmp_path), "catalog": sync_catalog(source, braze, tmp_path)}
        objects: dict[str, Any] = {}
        seen: Counter[str] = Counter()
        for obj in braze.tracked("attributes"):
            who = next((f"{k}={obj[k]}" for k in IDENTIFIERS if k in obj), None)
            who = who or f"alias={obj.get('user_alias', {}).get('alias_name')}"
            seen[who] += 1
            objects[f"attributes object {who} #{seen[who]}"] = obj
        for item, fields in braze.catalog_items(CATALOG).items():
            objects[f"catalog item {item}"] = fields
    for kind, result in runs.items():
        record = result.record
        objects[f"{kind} run"] = {k: record.get(k) for k in ("rowsRead", "undatedRows")} | {"exit": result.exit_code}
        for error in record.get("rowErrors", []):
            reasons = objects.setdefault(f"{kind} row errors of {error['identifier'] or '(no identifier)'}", [])
            reasons.append(error["reason"])
            reasons.sort()
    return objects


def differences(by_engine: dict[str, dict[str, Any]]) -> list[str]:
    """One line per object an engine delivered otherwise than the reference engine (or not at all)."""
    reference = by_engine[REFERENCE]
    lines = []
    for key in sorted(set().union(*by_engine.values())):
        expected = json.dumps(reference.get(key), sort_keys=True, ensure_ascii=False) if key in reference else None
        for engine, objects in by_engine.items():
            got = json.dumps(objects[key], sort_keys=True, ensure_ascii=False) if key in objects else None
            if got != expected:
                lines.append(f"{engine}: {key}: {got or 'missing'} ({REFERENCE}: {expected or 'missing'})")
    return lines


def test_every_engine_delivers_the_same_objects(
    duckdb_source: Source,
    pg_source: Source,
    snowflake_standin: SnowflakeStandIn,
    spark_admin: Any,
    spark_proxy: Any,
    bigquery_emulator: Any,
    sa_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(snowflake.ENDPOINT_ENV, snowflake_standin.endpoint)
    monkeypatch.setenv(databricks.ENDPOINT_ENV, spark_proxy.url)
    monkeypatch.setenv(bigquery.ENDPOINT_ENV, bigquery_emulator.url)
    monkeypatch.setattr(bigquery, "RETRY_SECONDS", 3.0)
    name = f"side_{uuid.uuid4().hex[:10]}"
    sf_source = source_in(snowflake_standin, snowflake_standin.new_database())
    spark_admin.execute(f"CREATE SCHEMA {SPARK_CATALOG}.{name}")
    client = setup_client(bigquery_emulator.url)
    client.create_dataset(name)

    engines: list[tuple[str, Source, Callable[[], None], Callable[[], None]]] = [
        (
            "duckdb",
            duckdb_source,
            lambda: create_in_duckdb(duckdb_source),
            lambda: create_catalog_in_duckdb(duckdb_source),
        ),
        ("postgresql", pg_source, lambda: create_in_postgres(pg_source), lambda: create_catalog_in_postgres(pg_source)),
        ("fakesnow", sf_source, lambda: create_in_snowflake(sf_source), lambda: create_catalog_in_snowflake(sf_source)),
        (
            "spark",
            spark_source(name),
            lambda: create_contract_in_spark(spark_admin, name),
            lambda: create_catalog_in_spark(spark_admin, name),
        ),
        (
            "googlesql",
            googlesql_source(name, sa_key),
            lambda: create_contract_in_googlesql(client, name),
            lambda: create_catalog_in_googlesql(client, name),
        ),
    ]
    try:
        by_engine = {}
        for engine, source, *creates in engines:
            for create in creates:
                create()
            (tmp_path / engine).mkdir()
            by_engine[engine] = delivered(source, tmp_path / engine)
    finally:
        spark_admin.execute(f"DROP SCHEMA {SPARK_CATALOG}.{name} CASCADE")
        client.delete_dataset(name, delete_contents=True, not_found_ok=True)
        client.close()  # type: ignore[no-untyped-call]

    assert not differences(by_engine), "\n".join(["objects that differ from DuckDB's:", *differences(by_engine)])
    reference = by_engine[REFERENCE]
    attributes = [v for k, v in reference.items() if k.startswith("attributes object")]
    assert normalise(attributes) == normalise(EXPECTED_ATTRIBUTES), "and they are the contract's"
    assert {k.removeprefix("catalog item "): v for k, v in reference.items() if k.startswith("catalog item")} == (
        EXPECTED_ITEMS
    )


def test_a_difference_names_the_engine_and_the_object() -> None:
    same = {"catalog item sku-1": {"id": "sku-1", "price": 12}}
    lines = differences(
        {REFERENCE: same, "postgresql": same, "spark": {"catalog item sku-1": {"id": "sku-1", "price": 12.0}}}
    )
    assert lines == ['spark: catalog item sku-1: {"id": "sku-1", "price": 12.0} (duckdb: {"id": "sku-1", "price": 12})']
    assert differences({REFERENCE: same, "googlesql": {}}) == [
        'googlesql: catalog item sku-1: missing (duckdb: {"id": "sku-1", "price": 12})'
    ]
