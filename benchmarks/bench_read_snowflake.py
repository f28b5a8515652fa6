"""Throughput of the Snowflake adapter's `read_changes` through the official client, from the fakesnow stand-in.

The stand-in (tests/integration/snowflake_standin.py: fakesnow's HTTP server, DuckDB underneath) runs in its own
process on loopback with a table of typical custom-attribute rows (TIMESTAMP_NTZ UPDATED_AT, EXTERNAL_ID, a
~300-byte JSON PAYLOAD of 9 keys, as VARCHAR or with --variant as VARIANT); this process opens the adapter with
CDI_SNOWFLAKE_ENDPOINT pointing at it and drains `read_changes`. The figure covers the connector's HTTP, Arrow
decoding to Python tuples and the adapter's UTC conversion, plus the stand-in's query time; real Snowflake adds
warehouse queueing/compilation and downloads large results as several chunks from cloud storage (prefetched in
parallel), which this does not exercise.

With --compare it also drains the same query straight from the connector's cursor both ways the connector offers
(`fetchmany`, and `fetch_arrow_batches()` + `to_pylist()`), which is how the adapter's choice of `fetchmany` was made.

    .venv/bin/python benchmarks/bench_read_snowflake.py [--rows 200000] [--chunk-rows 10000] [--variant] [--compare]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from snowflake_standin import SnowflakeStandIn, running_standin

from cdi_operator.warehouses import snowflake as sf
from cdi_operator.warehouses.base import ReadWindow

START = datetime(2026, 11, 28, 10, 0)


def fill(standin: SnowflakeStandIn, rows: int, variant: bool) -> list[str]:
    db = standin.new_database("BENCH")
    payload = (
        '\'{"first_name":"First\' || SEQ4() || \'","last_name":"Lastname-with-some-length",'
        '"email":"user\' || SEQ4() || \'@example.com","plan":"premium-annual-billed-yearly",'
        '"favorite_category":"outdoor-and-garden","lifetime_value":\' || (1234.56 + SEQ4()) || \','
        "\"logins\":' || (SEQ4() % 1000) || ',\"newsletter_opt_in\":' || IFF(SEQ4() % 2 = 0, 'true', 'false') || ',"
        '"last_seen_at":"2026-11-28T09:59:58.123456Z"}\''
    )
    standin.execute(
        f'CREATE TABLE "{db}"."PUBLIC"."USERS" (UPDATED_AT TIMESTAMP_NTZ, EXTERNAL_ID VARCHAR, '
        f"PAYLOAD {'VARIANT' if variant else 'VARCHAR'})"
    )
    standin.execute(
        f'INSERT INTO "{db}"."PUBLIC"."USERS" '
        f"SELECT DATEADD(millisecond, SEQ4(), ?), 'user-' || SEQ4(), "
        f"{'PARSE_JSON(' + payload + ')' if variant else payload} FROM TABLE(GENERATOR(ROWCOUNT => {rows}))",
        [("TIMESTAMP_NTZ", START)],
    )
    return [db, "PUBLIC", "USERS"]


def drain_adapter(standin: SnowflakeStandIn, table: list[str], rows: int, chunk_rows: int) -> tuple[int, float]:
    warehouse = sf.connect(standin.spec(), standin.secrets())
    try:
        warehouse.describe(table)
        window = ReadWindow(since=None, until=(START + timedelta(days=365)).replace(tzinfo=UTC))
        started = time.perf_counter()
        count = 0
        for chunk in warehouse.read_changes(
            table, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT", window, chunk_rows
        ):
            count += len(chunk)
        return count, time.perf_counter() - started
    finally:
        warehouse.close()


def drain_client(standin: SnowflakeStandIn, table: list[str], chunk_rows: int, mode: str) -> tuple[int, float]:
    import pyarrow as pa  # type: ignore[import-untyped]

    con = standin.connect()
    try:
        cursor = con.cursor()
        sql = f"SELECT UPDATED_AT, EXTERNAL_ID, PAYLOAD FROM {'.'.join(sf.quote_ident(p) for p in table)} ORDER BY 1"
        started = time.perf_counter()
        cursor.execute(sql)
        count = 0
        if mode == "fetchmany":
            while rows := cursor.fetchmany(chunk_rows):
                count += len(rows)
        else:
            for batch in cursor.fetch_arrow_batches():
                columns: list[Any] = []
                for column in batch.columns:
                    if pa.types.is_timestamp(column.type):
                        column = column.cast(pa.timestamp("us", tz="UTC"), safe=False)
                    columns.append(column.to_pylist())
                count += len(list(zip(*columns, strict=True)))
        return count, time.perf_counter() - started
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--variant", action="store_true", help="PAYLOAD as VARIANT instead of VARCHAR")
    parser.add_argument("--compare", action="store_true", help="also time the connector's two fetch paths alone")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with running_standin() as standin:
        os.environ[sf.ENDPOINT_ENV] = standin.endpoint
        table = fill(standin, args.rows, args.variant)
        kind = "VARIANT" if args.variant else "VARCHAR"
        best = min(
            (drain_adapter(standin, table, args.rows, args.chunk_rows) for _ in range(args.repeat)), key=lambda r: r[1]
        )
        count, seconds = best
        assert count == args.rows, f"read {count} rows, expected {args.rows}"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"read_changes, PAYLOAD {kind}: {count:,} rows in {seconds:.2f} s = {count / seconds:,.0f} rows/s "
            f"(best of {args.repeat}; peak RSS of this process {rss:.0f} MiB)"
        )
        if args.compare:
            for mode in ("fetchmany", "arrow"):
                count, seconds = min(
                    (drain_client(standin, table, args.chunk_rows, mode) for _ in range(args.repeat)),
                    key=lambda r: r[1],
                )
                print(f"connector alone, {mode}: {count:,} rows in {seconds:.2f} s = {count / seconds:,.0f} rows/s")


if __name__ == "__main__":
    main()
