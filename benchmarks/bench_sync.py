"""End-to-end sync throughput and peak memory: PostgreSQL -> `cdi sync` -> Braze emulator, all on loopback.

The runner and the emulator run as separate processes, as they would in production, so the figure is the runner's
own. Every emulator response takes `--latency` seconds (default 0.05), as a round trip to Braze does; without it
loopback would hide what concurrency is for. The baseline is benchmarks/naive_baseline.py: one request at a time.

    eval "$(bash hack/postgres.sh)"
    .venv/bin/python benchmarks/bench_sync.py --rows 100000 --rows 1000000

Prints one line per run (end to end: the process's wall time; sending: from the first request the emulator
counted to the last) and a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redshift_connector
from procfs import cpu_seconds

WINDOW_SECONDS = 3.0  # the emulator's /users/track rate-limit window, as Braze's

MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {{name: bench}}
stringData: {{password: "{password}", api-key: bench-key}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata: {{name: bench-pg}}
spec:
  type: redshift
  redshift:
    host: {host}
    port: {port}
    database: {database}
    user: {user}
    ssl: false
    passwordSecretRef: {{name: bench, key: password}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: BrazeWorkspace
metadata: {{name: bench}}
spec: {{reservePercent: {reserve}}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: CdiIntegration
metadata: {{name: bench}}
spec:
  credentialRef: {{name: bench-pg}}
  source: {{database: {database}, schema: bench, table: {table}}}
  dataType: customAttributes
  schedule: "0 * * * *"
  braze:
    restEndpoint: {endpoint}
    apiKeySecretRef: {{name: bench, key: api-key}}
    workspaceRef: {{name: bench}}
    maxInFlight: {in_flight}
  sync: {{settleSeconds: 0}}
"""


@dataclass
class Result:
    rows: int
    mode: str
    seconds: float
    rows_synced: int
    peak_rss_mib: float
    cpu_seconds: float  # user + system, of the runner's processes together
    sending_seconds: float  # from the first request the emulator counted to the last
    whole_windows_rows_per_second: float  # in the emulator's rate-limit windows the run spanned
    process_cpu_seconds: list[float]  # of each of the runner's processes: its own, then its reading process
    emulator_cpu_seconds: float = 0.0

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds * 1_000_000 / self.rows_synced

    @property
    def emulator_cpu_per_million(self) -> float:
        return self.emulator_cpu_seconds * 1_000_000 / self.rows_synced

    @property
    def busiest_capacity(self) -> float:
        """Rows a second the runner's busiest process would carry on a core of its own: its CPU time per row."""
        busiest = max(self.process_cpu_seconds, default=0.0)
        return self.rows_synced / busiest if busiest > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_synced / self.seconds

    @property
    def sending_rows_per_second(self) -> float:
        return self.rows_synced / self.sending_seconds if self.sending_seconds > 0 else 0.0


def pg_settings() -> dict[str, str]:
    try:
        return {k: os.environ[f"CDI_PG_{k.upper()}"] for k in ("host", "port", "user", "password", "database")}
    except KeyError:
        sys.exit('set the PostgreSQL settings first: eval "$(bash hack/postgres.sh)"')


def create_table(pg: dict[str, str], table: str, rows: int, reuse: bool = False) -> None:
    con = redshift_connector.connect(
        host=pg["host"],
        port=int(pg["port"]),
        user=pg["user"],
        password=pg["password"],
        database=pg["database"],
        ssl=False,
    )
    con.autocommit = True
    cur = con.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS bench")
    if reuse:
        cur.execute("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'bench' AND tablename = %s", [table])
        if cur.fetchone()[0]:
            cur.execute(f"SELECT count(*) FROM bench.{table}")
            if cur.fetchone()[0] == rows:
                _index_updated_at(cur, table)
                con.close()
                return
    cur.execute(f"DROP TABLE IF EXISTS bench.{table}")
    cur.execute(f"CREATE TABLE bench.{table} (updated_at TIMESTAMP, external_id VARCHAR(64), payload VARCHAR(65535))")
    # About 300 bytes of JSON per row, the shape of a typical profile update; timestamps a few per second.
    cur.execute(
        f"""INSERT INTO bench.{table}
        SELECT TIMESTAMP '2026-01-01' + (i / 3) * INTERVAL '1 second', 'user-' || i,
               json_build_object('first_name', 'Ada', 'last_name', 'Lovelace-' || i, 'plan', 'pro',
                 'lifetime_value', i % 5000, 'email_opt_in', i % 2 = 0, 'city', 'Berlin', 'country', 'DE',
                 'favorite_color', 'teal', 'signup_source', 'newsletter-2026-spring-campaign',
                 'last_order_id', 'order-' || (i * 7), 'loyalty_tier', 'gold')::text
        FROM generate_series(1, {rows}) AS i"""
    )
    _index_updated_at(cur, table)
    cur.execute(f"ANALYZE bench.{table}")
    con.close()


def _index_updated_at(cur: Any, table: str) -> None:
    # A CDI table's UPDATED_AT is its sort key in Redshift (Braze's advice, so that each sync reads only the new
    # rows); PostgreSQL's stand-in for it is an index. Without it the read starts with a sort of the whole table,
    # 18 s before the first row for 10M rows: the warehouse's time, not the runner's.
    cur.execute(f"CREATE INDEX IF NOT EXISTS {table}_updated_at ON bench.{table} (updated_at)")


def start_emulator(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cdi_operator.braze.emulator", "--port", "0", "--api-key", "bench-key"),
            *("--no-record", "--latency", str(latency)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip().split()[-1]
    return proc, url


def watch_cpu(pid: int, stop: threading.Event, seen: dict[int, float]) -> None:
    """Keep in `seen` the CPU seconds of `pid` and of each of its children, read every 0.1 s until `stop`."""
    while not stop.wait(0.1):
        for process in [pid, *_children(pid)]:
            try:
                seen[process] = cpu_seconds(process)
            except OSError:
                continue  # it has gone: its last figure stays


def _children(pid: int) -> list[int]:
    """The children of every thread of `pid` (the reading process is forked from a thread of the runner's)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def sending(url: str, rows: int) -> tuple[float, float]:
    """(seconds from the first request the emulator counted to the last, rows/s in the rate-limit windows the run
    spanned from start to end: all but its first and last)."""
    with urllib.request.urlopen(f"{url}/_emulator/state?objects=0") as response:
        state = json.load(response)
    seconds = float(state["last_request_at"] - state["first_request_at"])
    windows = [count for _, count in state["rate_windows"]["bench-key"]["track"]]
    whole = windows[1:-1]
    per_request = rows / sum(windows) if windows else 0.0
    return seconds, (sum(whole) / len(whole) / WINDOW_SECONDS * per_request if whole else 0.0)


def run(
    pg: dict[str, str],
    rows: int,
    mode: str,
    latency: float,
    in_flight: int,
    reserve: int,
    workdir: Path,
    baseline_rows: int | None = None,
) -> Result:
    table = f"users_{rows}"
    emulator, url = start_emulator(latency)
    result: Result | None = None
    try:
        sample = rows
        if mode == "baseline":
            command = [sys.executable, str(Path(__file__).with_name("naive_baseline.py")), f"bench.{table}", url]
            command.append("bench-key")
            if baseline_rows is not None and baseline_rows < rows:
                sample = baseline_rows
                command.append(str(sample))
        else:
            manifest = workdir / f"{table}.yaml"
            manifest.write_text(MANIFEST.format(table=table, endpoint=url, in_flight=in_flight, reserve=reserve, **pg))
            state = workdir / f"{table}.state.json"
            state.unlink(missing_ok=True)
            cdi = Path(sys.executable).with_name("cdi")
            command = [str(cdi), "sync", "-f", str(manifest), "--state", str(state), "--output", "json"]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seen: dict[int, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_cpu, args=(proc.pid, stop, seen), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        stop.set()
        watcher.join()
        assert proc.stdout is not None
        record = json.loads(proc.stdout.read().strip().splitlines()[-1])
        if status != 0 or record["rowsSynced"] != sample:
            raise SystemExit(f"{mode} failed: exit status {status}, {record}")
        cpu = usage.ru_utime + usage.ru_stime
        sent, whole = sending(url, record["rowsSynced"])
        processes = [seen.pop(proc.pid, 0.0), *seen.values()]
        result = Result(rows, mode, seconds, record["rowsSynced"], usage.ru_maxrss / 1024, cpu, sent, whole, processes)
        return result
    finally:
        emulator.terminate()
        _, _, emulator_usage = os.wait4(emulator.pid, 0)
        if result is not None:
            result.emulator_cpu_seconds = emulator_usage.ru_utime + emulator_usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, action="append", help="table sizes (default 100000 and 1000000)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-request-at-a-time baseline")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each emulator response takes")
    parser.add_argument(
        "--in-flight", type=int, default=256, help="spec.braze.maxInFlight of the runner (default 256, its default)"
    )
    parser.add_argument(
        "--reserve-percent",
        type=int,
        default=0,
        help="the BrazeWorkspace's reservePercent (default 0: the runner may use the whole workspace, 75,000 rows/s)",
    )
    parser.add_argument("--reuse-tables", action="store_true", help="keep a table of the right size from a former run")
    parser.add_argument(
        "--baseline-rows", type=int, help="send only this many rows with the baseline (it takes 12 minutes a million)"
    )
    args = parser.parse_args()
    pg = pg_settings()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cdi-bench-") as tmp:
        for rows in args.rows or [100_000, 1_000_000]:
            create_table(pg, f"users_{rows}", rows, args.reuse_tables)
            for mode in ["runner"] + ([] if args.no_baseline else ["baseline"]):
                result = run(
                    pg, rows, mode, args.latency, args.in_flight, args.reserve_percent, Path(tmp), args.baseline_rows
                )
                results.append(result)
                print(
                    f"{rows:>9,} rows  {mode:<8}  {result.seconds:7.1f} s  {result.rows_per_second:9,.0f} rows/s  "
                    f"sending {result.sending_rows_per_second:9,.0f} rows/s  "
                    f"whole windows {result.whole_windows_rows_per_second:9,.0f} rows/s  "
                    f"peak RSS {result.peak_rss_mib:6.1f} MiB  CPU {result.cpu_per_million:5.1f} s per 1M rows "
                    f"(emulator {result.emulator_cpu_per_million:4.1f})  busiest process alone on a core "
                    f"{result.busiest_capacity:9,.0f} rows/s",
                    flush=True,
                )
    print(
        "\n| rows | mode | rows sent | seconds | rows/s | rows/s sending | rows/s in whole windows | peak RSS (MiB) "
        "| CPU s per 1M rows | emulator's CPU s per 1M rows "
        "| rows/s of the busiest runner process alone on a core |"
        "\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for r in results:
        print(
            f"| {r.rows:,} | {r.mode} | {r.rows_synced:,} | {r.seconds:.1f} | {r.rows_per_second:,.0f} | "
            f"{r.sending_rows_per_second:,.0f} | {r.whole_windows_rows_per_second:,.0f} | "
            f"{r.peak_rss_mib:.0f} | {r.cpu_per_million:.1f} | {r.emulator_cpu_per_million:.1f} | "
            f"{r.busiest_capacity:,.0f} |"
        )


if __name__ == "__main__":
    main()
