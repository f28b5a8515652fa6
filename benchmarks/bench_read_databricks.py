"""Rows/s of the Databricks adapter's `read_changes` through the real `databricks-sql-connector`, from the Thrift
stand-in (tests/integration/databricks_standin.py) in a separate process on loopback.

The table has typical custom-attribute rows: an aware UPDATED_AT, EXTERNAL_ID and a ~300-byte JSON PAYLOAD (STRING).
What is measured: Thrift calls over HTTP, Arrow IPC decoding in the connector, and the adapter's conversion to
tuples (UTC timestamps, payload normalisation). A real warehouse adds network latency per FetchResults and, for
large results, cloud fetch; the stand-in's DuckDB side is part of the figure.

    .venv/bin/python benchmarks/bench_read_databricks.py [--rows 200000] [--chunk 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cdi_operator.api.models import DatabricksSpec
from cdi_operator.warehouses import ReadWindow
from cdi_operator.warehouses import databricks as adapter

STANDIN = Path(__file__).resolve().parents[1] / "tests" / "integration" / "databricks_standin.py"
TOKEN = "dapi-standin-token"
HTTP_PATH = "/sql/1.0/warehouses/standin"

TABLE_SQL = """
CREATE TABLE sales.users AS
SELECT TIMESTAMPTZ '2026-11-28 10:00:00+00' + to_microseconds(i) AS UPDATED_AT,
       'user-' || i AS EXTERNAL_ID,
       json_object('first_name', 'First' || i, 'last_name', 'Lastname-with-some-length',
                   'email', 'user' || i || '@example.com', 'plan', 'premium-annual-billed-yearly',
                   'favorite_category', 'outdoor-and-garden', 'lifetime_value', 1234.56 + i,
                   'logins', i % 1000, 'newsletter_opt_in', i % 2 = 0,
                   'last_seen_at', '2026-11-28T09:59:58.123456Z')::VARCHAR AS PAYLOAD
FROM range({rows}) r(i)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    server = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN),
            "--setup",
            "CREATE SCHEMA sales",
            "--setup",
            TABLE_SQL.format(rows=args.rows),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        os.environ[adapter.ENDPOINT_ENV] = f"http://127.0.0.1:{port}"
        settings = DatabricksSpec.model_validate(
            {"serverHostname": "127.0.0.1", "httpPath": HTTP_PATH, "accessTokenSecretRef": {"name": "d", "key": "t"}}
        )
        warehouse = adapter.connect(settings, {("d", "t"): TOKEN})
        table = ["workspace", "sales", "users"]
        warehouse.describe(table)
        window = ReadWindow(since=None, until=datetime(2030, 1, 1, tzinfo=UTC))
        best = 0.0
        for run in range(args.repeat):
            started, count = time.perf_counter(), 0
            for chunk in warehouse.read_changes(
                table, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT", window, args.chunk
            ):
                count += len(chunk)
            elapsed = time.perf_counter() - started
            assert count == args.rows, count
            rate = count / elapsed
            best = max(best, rate)
            print(f"run {run + 1}: {count} rows in {elapsed:.2f} s = {rate:,.0f} rows/s (chunk {args.chunk})")
        print(f"best: {best:,.0f} rows/s")
        warehouse.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
