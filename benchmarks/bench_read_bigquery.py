"""Throughput of the BigQuery adapter's `read_changes` through the official client, from the REST stand-in.

The stand-in (tests/integration/bigquery_standin.py, DuckDB behind BigQuery's v2 JSON API) runs in its own process
on loopback with a table of typical custom-attribute rows (TIMESTAMP UPDATED_AT, EXTERNAL_ID, a ~300-byte JSON
PAYLOAD of 9 keys); this process opens the adapter with CDI_BIGQUERY_API_ENDPOINT pointing at it and drains
`read_changes` (one query job, jobs.getQueryResults page by page). The figure covers the client's HTTP, JSON
decoding and per-cell type conversion plus the stand-in's page encoding, which stands in for BigQuery's serving
time; real BigQuery adds network round trips per page and job start-up (typically 0.5-2 s).

    .venv/bin/python benchmarks/bench_read_bigquery.py [--rows 200000] [--chunk-rows 10000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from bigquery_standin import BigQueryStandIn

from cdi_operator.api.models import BigQuerySpec
from cdi_operator.warehouses import bigquery as bq
from cdi_operator.warehouses.base import ReadWindow

PROJECT = "cdi-bench-project"
START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def serve(rows: int, pipe: Connection) -> None:
    """The stand-in, filled with `rows` typical rows, until the parent closes the pipe."""
    with BigQueryStandIn(PROJECT) as standin:
        standin.create_dataset("bench")
        with standin.cursor() as con:
            con.execute(
                f"""
                CREATE TABLE bench.users AS
                SELECT TIMESTAMPTZ '{START.isoformat()}' + i * INTERVAL 1 MILLISECOND AS UPDATED_AT,
                       'user-' || i AS EXTERNAL_ID,
                       json_object('first_name', 'First' || i, 'last_name', 'Lastname-with-some-length',
                                   'email', 'user' || i || '@example.com', 'plan', 'premium-annual-billed-yearly',
                                   'favorite_category', 'outdoor-and-garden', 'lifetime_value', 1234.56 + i,
                                   'logins', i % 1000, 'newsletter_opt_in', i % 2 = 0,
                                   'last_seen_at', '2026-11-28T09:59:58.123456Z') AS PAYLOAD
                FROM range({rows}) t(i)
                """
            )
        pipe.send(standin.url)
        pipe.recv_bytes()  # EOF when the parent is done


def service_account_key() -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key": pem,
            "client_email": f"bench@{PROJECT}.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(args.rows, child), daemon=True)
    server.start()
    try:
        os.environ[bq.ENDPOINT_ENV] = parent.recv()
        settings = BigQuerySpec.model_validate(
            {"project": PROJECT, "serviceAccountKeySecretRef": {"name": "bq", "key": "key.json"}}
        )
        warehouse = bq.connect(settings, {("bq", "key.json"): service_account_key()})
        table = ("bench", "users")
        columns = ("UPDATED_AT", "EXTERNAL_ID", "PAYLOAD")
        warehouse.describe(table)
        window = ReadWindow(since=None, until=START + timedelta(days=365))
        started = time.perf_counter()
        count = chunks = biggest = 0
        for chunk in warehouse.read_changes(table, columns, "UPDATED_AT", window, args.chunk_rows):
            count += len(chunk)
            chunks += 1
            biggest = max(biggest, len(chunk))
        elapsed = time.perf_counter() - started
        warehouse.close()
    finally:
        parent.close()
        server.join(timeout=10)
    assert count == args.rows, f"read {count} of {args.rows} rows"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{count:,} rows in {elapsed:.2f} s: {count / elapsed:,.0f} rows/s through google-cloud-bigquery "
        f"({chunks} pages of at most {args.chunk_rows:,}, largest {biggest:,}; reader peak RSS {peak:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
