"""The operator at scale: N CdiIntegrations applied at once, time until all are Active, the operator's peak memory.

A local control plane (etcd + kube-apiserver + kube-controller-manager from hack/controlplane, through the e2e
harness), PostgreSQL as the warehouse (hack/postgres.sh, or $CDI_PG_*), one WarehouseCredential and N integrations,
each on its own view of one small table (two integrations on one credential and table are rejected as
DuplicateTable). `cdi operator` runs as a subprocess watching the benchmark's namespace; every integration needs a
passing connection test (a real query against PostgreSQL) before it is Active and its CronJob exists.

    KUBEBUILDER_ASSETS=$(bash hack/controlplane/build.sh | tail -1) \\
        .venv/bin/python benchmarks/bench_operator_scale.py --integrations 1000

Reports: the time to create the objects, the time from the first create until all are Active (and until half are),
the operator's peak RSS (VmHWM of /proc/PID/status) and CPU time, after `--settle` more seconds (at least one periodic
resync, which reconciles every integration again), and the apiserver's requests from the first create until all are
Active, less the benchmark's own (`requests_to_active`, by verb and resource).

Then every integration syncs at once, `--run-seconds` long, through runner_standin.py (the runner's own status
writes at its real cadence; 1,000 runner processes do not fit on 2 cores): once with the adaptive checkpoints
(runner/cadence.py), once with a checkpoint every second (as before), and with `--baseline REF` once more with
fixed checkpoints against the operator of that commit. For each: the apiserver's requests (apiserver_request_total
from its /metrics) per run, the runner's and the rest (the operator's, and the controller-manager's), the
operator's CPU seconds and peak RSS (VmRSS sampled every second). Prints a JSON line and Markdown rows for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import runner_standin
from kubernetes import client, config
from procfs import cpu_seconds, proc_status
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # the e2e harness: a local control plane, the CRD installer
harness: Any = importlib.import_module("harness")
postgres: Any = importlib.import_module("harness.postgres")
install_crds: Any = importlib.import_module("test_crds_apiserver").install_crds

GROUP, VERSION, CDI, WHC = "cdi.ingest.dev", "v1alpha1", "cdiintegrations", "warehousecredentials"


def create_views(pg: dict[str, str], schema: str, count: int) -> None:
    conn = postgres.connect(pg)
    try:
        cursor = conn.cursor()
        cursor.execute(f'CREATE SCHEMA "{schema}"')
        cursor.execute(
            f'CREATE TABLE "{schema}".users (UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), PAYLOAD VARCHAR(1000))'
        )
        base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
        cursor.executemany(
            f'INSERT INTO "{schema}".users VALUES (%s, %s, %s)',
            [[base + timedelta(seconds=i), f"user-{i}", "{}"] for i in range(5)],
        )
        for i in range(count):
            cursor.execute(f'CREATE VIEW "{schema}".v{i:05d} AS SELECT * FROM "{schema}".users')
    finally:
        conn.close()


def drop_schema(pg: dict[str, str], schema: str) -> None:
    conn = postgres.connect(pg)
    try:
        conn.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def integration(name: str, pg: dict[str, str], schema: str, table: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CdiIntegration",
        "metadata": {"name": name},
        "spec": {
            "credentialRef": {"name": "wh"},
            "source": {"database": pg["CDI_PG_DATABASE"], "schema": schema, "table": table},
            "dataType": "customAttributes",
            "schedule": "0 3 * * *",
            "braze": {"restEndpoint": "http://127.0.0.1:9", "apiKeySecretRef": {"name": "braze", "key": "api-key"}},
        },
    }


@dataclass(frozen=True)
class Options:
    count: int
    settle: float
    timeout: float
    resync: float
    work: Path
    run_seconds: float
    baseline: Path | None  # the operator/ folder of the baseline's commit
    tree: Path | None  # the operator/ folder to run instead of this checkout's


def run(options: Options) -> dict[str, Any]:
    pg = postgres.pg_settings()
    schema = f"scale_{uuid.uuid4().hex[:10]}"
    t = time.monotonic()
    create_views(pg, schema, options.count)
    print(f"created {options.count} views in {time.monotonic() - t:.1f} s", file=sys.stderr)
    try:
        with harness.LocalControlPlane(base_dir=options.work / "controlplane", keep_dir=True) as cp:
            return _run(cp, pg, schema, options)
    finally:
        drop_schema(pg, schema)


def _run(cp: Any, pg: dict[str, str], schema: str, options: Options) -> dict[str, Any]:
    count, settle, timeout, resync, work = options.count, options.settle, options.timeout, options.resync, options.work
    run_seconds, baseline, tree = options.run_seconds, options.baseline, options.tree
    new_client: Any = config.new_client_from_config
    api = new_client(config_file=str(cp.kubeconfig))
    install_crds(api)
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    namespace = "bench-scale"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "wh-password"}, "stringData": {"password": pg["CDI_PG_PASSWORD"]}}
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "braze"}, "stringData": {"api-key": "bench"}})
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        WHC,
        postgres.redshift_credential(pg, "wh-password"),
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CDI_", "KUBERNETES_", "PYTHONPATH"))},
        "KUBECONFIG": str(cp.kubeconfig),
        "CDI_RUNNER_IMAGE": "cdi-operator:bench",
        "CDI_WATCH_NAMESPACES": namespace,
        "CDI_RESYNC_SECONDS": f"{resync:g}",
        "CDI_METRICS_PORT": str(free_port()),
    }
    log_path = work / "operator.log"
    operator = start_operator({**env, "PYTHONPATH": str(tree)} if tree else env, log_path)
    try:
        time.sleep(3)  # let it start watching (an empty namespace)
        base_rss = int(proc_status(operator.pid)["VmRSS"].split()[0])
        names = [f"it-{i:05d}" for i in range(count)]
        requests_before = apiserver_requests(api)
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, CDI, integration(names[i], pg, schema, f"v{i:05d}")
                    ),
                    range(count),
                )
            )
        applied = time.monotonic() - start
        print(f"applied {count} CdiIntegrations in {applied:.1f} s", file=sys.stderr)
        half = None
        phases: dict[str, int] = {}
        polls = 0
        while True:
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited ({operator.returncode}); see {log_path}")
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, CDI)["items"]
            phases = {}
            for item in items:
                phase = (item.get("status") or {}).get("phase") or "-"
                phases[phase] = phases.get(phase, 0) + 1
            active = phases.get("Active", 0)
            elapsed = time.monotonic() - start
            if half is None and active >= count / 2:
                half = elapsed
            if active == count:
                break
            if elapsed > timeout:
                raise RuntimeError(f"not all Active after {timeout:g} s: {phases}; see {log_path}")
            print(f"  {elapsed:6.1f} s: {phases}", file=sys.stderr)
            polls += 1
            time.sleep(2)
        all_active = time.monotonic() - start
        # less this benchmark's own: the creates and its LISTs of the integrations
        to_active = apiserver_requests(api) - requests_before
        to_active["POST cdiintegrations"] -= count
        to_active["LIST cdiintegrations"] -= polls + 1
        peak_active = int(proc_status(operator.pid)["VmHWM"].split()[0])
        cpu_active = cpu_seconds(operator.pid)
        print(f"all {count} Active after {all_active:.1f} s; settling {settle:g} s", file=sys.stderr)
        time.sleep(settle)
        status = proc_status(operator.pid)
        cronjobs = len(client.BatchV1Api(api).list_namespaced_cron_job(namespace).items)
        result: dict[str, Any] = {
            "integrations": count,
            "apply_seconds": round(applied, 1),
            "half_active_seconds": round(half or 0.0, 1),
            "all_active_seconds": round(all_active, 1),
            "cronjobs": cronjobs,
            "rss_before_kib": base_rss,
            "peak_rss_when_active_kib": peak_active,
            "peak_rss_kib": int(status["VmHWM"].split()[0]),
            "rss_after_settle_kib": int(status["VmRSS"].split()[0]),
            "cpu_seconds_until_active": round(cpu_active, 1),
            "requests_to_active_per_integration": round(sum(to_active.values()) / count, 1),
            "requests_to_active": dict(to_active.most_common(16)),
            "cpu_seconds_total": round(cpu_seconds(operator.pid), 1),
            "settle_seconds": settle,
            "resync_seconds": resync,
            "threads": int(status["Threads"]),
            "syncing": {},
        }
        if run_seconds:
            kubeconfig = client.Configuration()
            config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=kubeconfig)
            for cadence in ("adaptive", "fixed"):
                result["syncing"][cadence] = syncing(api, kubeconfig, operator, namespace, names, run_seconds, cadence)
            if baseline is not None:
                stop_operator(operator)
                operator = start_operator({**env, "PYTHONPATH": str(baseline)}, work / "operator-baseline.log")
                idle(operator)
                result["syncing"]["baseline"] = syncing(
                    api, kubeconfig, operator, namespace, names, run_seconds, "fixed"
                )
        return result
    finally:
        stop_operator(operator)
        api.close()


def start_operator(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cdi_operator.cli", "operator"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_operator(operator: subprocess.Popen[bytes]) -> None:
    if operator.poll() is None:
        os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait(10)


def idle(operator: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    """Until a just started operator has reconciled everything once (under 0.5 CPU seconds in 5 s)."""
    deadline = time.monotonic() + timeout
    time.sleep(5)
    before = cpu_seconds(operator.pid)
    while time.monotonic() < deadline:
        time.sleep(5)
        now = cpu_seconds(operator.pid)
        if now - before < 0.5:
            return
        before = now


def apiserver_requests(api: Any) -> Counter[str]:
    """apiserver_request_total from the apiserver's /metrics, by verb and resource[/subresource]."""
    response = api.call_api("GET", f"{api.configuration.host}/metrics")
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.read().decode()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
                counts[f"{labels['verb']} {resource}"] += int(sample.value)
    return counts


def syncing(
    api: Any,
    kubeconfig: Any,
    operator: subprocess.Popen[bytes],
    namespace: str,
    names: list[str],
    seconds: float,
    cadence: str,
) -> dict[str, Any]:
    """One run of every integration at once (runner_standin.py), with the apiserver's requests and the operator's
    CPU and RSS meanwhile."""
    print(f"{len(names)} runs of {seconds:g} s at once, {cadence} checkpoints", file=sys.stderr)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            peak[0] = max(peak[0], int(proc_status(operator.pid)["VmRSS"].split()[0]))

    sampler = threading.Thread(target=sample, daemon=True)
    requests_before, cpu_before = apiserver_requests(api), cpu_seconds(operator.pid)
    sampler.start()
    runs = runner_standin.run_all(kubeconfig, namespace, names, seconds, adaptive=cadence == "adaptive")
    idle(operator)  # what the last records caused
    done.set()
    sampler.join()
    requests = apiserver_requests(api) - requests_before
    total = sum(requests.values()) - 2  # this function's own two reads of /metrics
    operator_requests = total - runs["runner_requests"]
    return {
        **runs,
        "cadence": cadence,
        "apiserver_requests": total,
        "requests_per_run": round(total / len(names), 1),
        "runner_requests_per_run": round(runs["runner_requests"] / len(names), 1),
        "operator_requests_per_run": round(operator_requests / len(names), 1),
        "operator_cpu_seconds": round(cpu_seconds(operator.pid) - cpu_before, 1),
        "operator_peak_rss_kib": peak[0],
        "by_request": dict(requests.most_common(12)),
    }


def checkout(ref: str, into: Path) -> Path:
    """The `operator/` folder of git commit `ref`, for PYTHONPATH."""
    into.mkdir()
    tree = subprocess.run(["git", "-C", str(REPO), "archive", ref, "operator"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=tree.stdout, check=True)
    return into / "operator"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=75.0, help="seconds to keep running once all are Active")
    parser.add_argument("--resync", type=float, default=60.0, help="the operator's $CDI_RESYNC_SECONDS")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=120.0,
        help="then one run of every integration at once, this long, with adaptive and with fixed 1 s checkpoints "
        "(0: none)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also the fixed-checkpoint runs against the operator of this git commit (e.g. the one before issue 13)",
    )
    parser.add_argument("--operator", metavar="REF", help="run everything against the operator of this git commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdi-bench-scale-") as tmp:
        baseline = checkout(args.baseline, Path(tmp) / "baseline") if args.baseline else None
        tree = checkout(args.operator, Path(tmp) / "operator") if args.operator else None
        result = run(
            Options(
                count=args.integrations,
                settle=args.settle,
                timeout=args.timeout,
                resync=args.resync,
                work=Path(tmp),
                run_seconds=args.run_seconds,
                baseline=baseline,
                tree=tree,
            )
        )
    print(json.dumps(result))
    print(
        f"| {result['integrations']} | {result['apply_seconds']} | {result['half_active_seconds']} | "
        f"{result['all_active_seconds']} | {result['peak_rss_kib'] / 1024:.0f} MiB | "
        f"{result['rss_before_kib'] / 1024:.0f} MiB | {result['cpu_seconds_total']} |"
    )
    for name, phase in result["syncing"].items():
        print(
            f"| {name} | {phase['wall_seconds']} | {phase['checkpoints_per_run']} | {phase['requests_per_run']} | "
            f"{phase['runner_requests_per_run']} | {phase['operator_requests_per_run']} | "
            f"{phase['operator_cpu_seconds']} | {phase['operator_peak_rss_kib'] / 1024:.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
