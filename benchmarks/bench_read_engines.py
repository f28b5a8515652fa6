"""Rows/s of `read_changes` through the official clients against the real engines of the test tiers: the Databricks
adapter against Spark SQL (Spark's Thrift server behind tests/integration/databricks_proxy.py) and the BigQuery
adapter against GoogleSQL (goccy's bigquery-emulator).

The table has typical custom-attribute rows: UPDATED_AT (TIMESTAMP), EXTERNAL_ID and a ~300-byte JSON PAYLOAD
(STRING in Spark, JSON in BigQuery). The figures include the engines' own execution and, for Spark, the proxy's
conversion of HiveServer2's columnar rows to Arrow in Python, which a real SQL warehouse does not have: they bound
the adapters from below, not what production gives.

    CDI_BIGQUERY_EMULATOR=$(bash hack/bigquery-emulator/build.sh | tail -1) \\
        .venv/bin/python benchmarks/bench_read_engines.py [--engine spark|googlesql] [--rows 200000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from cdi_operator.api.models import BigQuerySpec, DatabricksSpec
from cdi_operator.warehouses import ReadWindow, Warehouse
from cdi_operator.warehouses import bigquery as bq
from cdi_operator.warehouses import databricks as dbx

COLUMNS = ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"]
WINDOW = ReadWindow(since=None, until=datetime(2030, 1, 1, tzinfo=UTC))
SPARK_PAYLOAD = (
    "to_json(named_struct('first_name', concat('First', id), 'last_name', 'Lastname-with-some-length', "
    "'email', concat('user', id, '@example.com'), 'plan', 'premium-annual-billed-yearly', "
    "'favorite_category', 'outdoor-and-garden', 'lifetime_value', 1234.56 + id, 'logins', id % 1000, "
    "'newsletter_opt_in', id % 2 = 0, 'last_seen_at', '2026-11-28T09:59:58.123456Z'))"
)


def spark(rows: int, home: Path) -> Iterator[tuple[Warehouse, list[str]]]:
    from databricks_proxy import DatabricksProxy
    from spark_server import SparkThriftServer

    token, path = "dapi-bench", "/sql/1.0/warehouses/bench"
    with SparkThriftServer(home) as server, DatabricksProxy("127.0.0.1", server.port, token) as proxy:
        conn = proxy.connect(path)
        with conn.cursor() as cursor:
            cursor.execute("CREATE SCHEMA bench")
            cursor.execute(
                "CREATE TABLE bench.users USING parquet AS SELECT "
                "timestamp_micros(1795860000000000 + id) AS UPDATED_AT, concat('user-', id) AS EXTERNAL_ID, "
                f"{SPARK_PAYLOAD} AS PAYLOAD FROM range({rows})"
            )
        conn.close()
        os.environ[dbx.ENDPOINT_ENV] = proxy.url
        settings = DatabricksSpec.model_validate(
            {"serverHostname": "127.0.0.1", "httpPath": path, "accessTokenSecretRef": {"name": "d", "key": "t"}}
        )
        warehouse = dbx.connect(settings, {("d", "t"): token})
        yield warehouse, ["spark_catalog", "bench", "users"]
        warehouse.close()


def googlesql(rows: int, home: Path) -> Iterator[tuple[Warehouse, list[str]]]:
    from bigquery_emulator import BigQueryEmulator
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    project = "cdi-bench"
    with BigQueryEmulator(project, home / "emulator.log") as emulator:
        client = bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=emulator.url),
        )
        client.create_dataset("bench")
        client.query(
            "CREATE TABLE bench.users AS SELECT TIMESTAMP_MICROS(1795860000000000 + x) AS UPDATED_AT, "
            "CONCAT('user-', CAST(x AS STRING)) AS EXTERNAL_ID, TO_JSON(STRUCT("
            "CONCAT('First', CAST(x AS STRING)) AS first_name, 'Lastname-with-some-length' AS last_name, "
            "CONCAT('user', CAST(x AS STRING), '@example.com') AS email, 'premium-annual-billed-yearly' AS plan, "
            "'outdoor-and-garden' AS favorite_category, 1234.56 + x AS lifetime_value, MOD(x, 1000) AS logins, "
            "MOD(x, 2) = 0 AS newsletter_opt_in, '2026-11-28T09:59:58.123456Z' AS last_seen_at)) AS PAYLOAD "
            f"FROM UNNEST(GENERATE_ARRAY(0, {rows - 1})) AS x"
        ).result()
        os.environ[bq.ENDPOINT_ENV] = emulator.url
        settings = BigQuerySpec.model_validate(
            {"project": project, "serviceAccountKeySecretRef": {"name": "k", "key": "key.json"}}
        )
        warehouse = bq.connect(settings, {("k", "key.json"): _key(project)})
        yield warehouse, ["bench", "users"]
        warehouse.close()


def _key(project: str) -> str:
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    return json.dumps(
        {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "0" * 40,
            "private_key": pem,
            "client_email": f"bench@{project}.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


ENGINES: dict[str, Callable[[int, Path], Iterator[tuple[Warehouse, list[str]]]]] = {
    "spark": spark,
    "googlesql": googlesql,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), action="append")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for engine in args.engine or sorted(ENGINES):
        with tempfile.TemporaryDirectory() as home:
            for warehouse, table in ENGINES[engine](args.rows, Path(home)):
                warehouse.describe(table)
                best = 0.0
                for run in range(args.repeat):
                    started, count = time.perf_counter(), 0
                    chunk: Any
                    for chunk in warehouse.read_changes(table, COLUMNS, "UPDATED_AT", WINDOW, args.chunk):
                        count += len(chunk)
                    elapsed = time.perf_counter() - started
                    assert count == args.rows, count
                    best = max(best, count / elapsed)
                    print(f"{engine} run {run + 1}: {count} rows in {elapsed:.2f} s = {count / elapsed:,.0f} rows/s")
                print(f"{engine} best: {best:,.0f} rows/s")


if __name__ == "__main__":
    main()
