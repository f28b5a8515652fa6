"""Micro-benchmark of row conversion alone: `RowConverter.convert()` on typical custom-attribute rows.

A typical row: EXTERNAL_ID, an aware UTC UPDATED_AT and a ~300-byte JSON PAYLOAD with 9 flat keys, as a
warehouse adapter yields it. The runner's end-to-end budget is 25,000 rows/s on 2 cores; this is far above.

    .venv/bin/python benchmarks/bench_rows.py [--rows 200000] [--native]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import orjson

from cdi_operator.api.models import DataType
from cdi_operator.runner.columns import plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.rows import RowError


def typical_rows(count: int, native: bool) -> list[tuple[object, ...]]:
    start = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    rows: list[tuple[object, ...]] = []
    for i in range(count):
        payload = {
            "first_name": f"First{i}",
            "last_name": "Lastname-with-some-length",
            "email": f"user{i}@example.com",
            "plan": "premium-annual-billed-yearly",
            "favorite_category": "outdoor-and-garden",
            "lifetime_value": 1234.56 + i,
            "logins": i % 1000,
            "newsletter_opt_in": i % 2 == 0,
            "last_seen_at": "2026-11-28T09:59:58.123456Z",
        }
        value: object = payload if native else orjson.dumps(payload).decode()
        rows.append((start + timedelta(microseconds=i), f"user-{i}", value))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--native", action="store_true", help="PAYLOAD as a native dict instead of JSON text")
    args = parser.parse_args()
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    converter = RowConverter(DataType.CUSTOM_ATTRIBUTES, plan)
    rows = typical_rows(args.rows, args.native)
    size = len(orjson.dumps(typical_rows(1, False)[0][2]))
    convert = converter.convert
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        errors = 0
        for row in rows:
            if isinstance(convert(row), RowError):
                errors += 1
        best = min(best, time.perf_counter() - started)
    assert errors == 0, f"{errors} typical rows failed"
    kind = "native dict" if args.native else "JSON text"
    print(
        f"{args.rows} rows ({kind} PAYLOAD of ~{size} bytes, 9 flat keys): "
        f"{args.rows / best:,.0f} rows/s, {best / args.rows * 1e6:.2f} µs/row (best of 3, one core)"
    )


if __name__ == "__main__":
    main()
