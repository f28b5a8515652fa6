"""A stand-in for many runner pods at once: exactly the API requests a run makes of the apiserver, with the runner's
own code (runner/claim.py, runner/status_store.py) at its real checkpoint cadence (runner/cadence.py), and nothing
else (no warehouse, no Braze), so that 1,000 runs fit in one process on 2 cores.

Each run, in a thread: reads its CdiIntegration and WarehouseCredential and the credential's and Braze key's Secrets
(as commands/in_cluster.py does), claims the run Lease, reads the watermark, writes its Running record, then for
`seconds` checkpoints a watermark that moves on (every `checkpoint_interval(1 s, age)`, or every 1 s with
`adaptive=False`, as before issue 13) and renews the Lease every third of leaseSeconds; at its end a last
checkpoint, its Success record and the Lease's release.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from cdi_operator.api.models import CDI_PLURAL, WHC_PLURAL, RunResult, RunSummary, Watermark
from cdi_operator.commands.in_cluster import API_RETRY_SECONDS
from cdi_operator.kube import Kube, KubeError
from cdi_operator.runner.cadence import checkpoint_interval
from cdi_operator.runner.claim import RunClaim, RunIdentity
from cdi_operator.runner.run_record import new_run_id
from cdi_operator.runner.state import CheckpointDeferred
from cdi_operator.runner.status_store import CrStatusStore

LEAST = 1.0  # spec.sync.checkpointSeconds, its default
LEASE_SECONDS = 60  # spec.sync.leaseSeconds, its default


class CountingApiClient(client.ApiClient):  # type: ignore[misc]
    """Counts the requests it sends (all clients of one stand-in share the counter)."""

    counter = itertools.count()

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        next(self.counter)
        return super().call_api(*args, **kwargs)


def run_once(kube: Kube, namespace: str, name: str, seconds: float, *, adaptive: bool) -> tuple[int, Counter[str]]:
    """One run; returns its checkpoints."""
    started_at = datetime.now(UTC)
    obj = kube.get_custom(CDI_PLURAL, namespace, name)
    kube.get_custom(WHC_PLURAL, namespace, obj["spec"]["credentialRef"]["name"])
    kube.get_secret_value(namespace, "wh-password", "password")
    kube.get_secret_value(namespace, "braze", "api-key")
    me = RunIdentity(run_id=new_run_id(), trigger="schedule", job=f"{name}-1", pod=f"{name}-1-x")
    claim = RunClaim(kube, namespace, name, me, lease_seconds=LEASE_SECONDS)
    held_by = claim.take()
    if held_by is not None:
        raise RuntimeError(f"{name}: {held_by}")
    renewed = time.monotonic()
    deferred: Counter[str] = Counter()  # API calls the runner lets fail and goes on

    def keep() -> None:  # what the runner's renewal task does beside the run (RunClaim.keep)
        nonlocal renewed
        if time.monotonic() - renewed >= LEASE_SECONDS / 3:
            renewed = time.monotonic()
            try:
                claim.renew()
            except KubeError:  # as RunClaim.keep: the API server may be back before the claim counts as lost
                deferred["renewal"] += 1

    store = CrStatusStore(
        kube,
        namespace,
        name,
        resource_version=obj["metadata"]["resourceVersion"],
        job=me.job,
        run_id=me.run_id,
        pod=me.pod,
        claim=claim,
    )
    store.load_watermark()
    keep()
    store.mark_running(RunSummary(trigger="schedule", started_at=started_at, result=RunResult.RUNNING))
    start = time.monotonic()
    checkpoints = 0
    due = start
    while time.monotonic() - start < seconds:
        keep()
        if time.monotonic() >= due:
            age = time.monotonic() - start
            try:
                store.save_watermark(Watermark.model_validate({"updatedAt": started_at + timedelta(seconds=age)}))
                checkpoints += 1
            except CheckpointDeferred:  # as runner/sync.py: the next checkpoint carries it
                deferred["checkpoint"] += 1
            due = time.monotonic() + (checkpoint_interval(LEAST, time.monotonic() - start) if adaptive else LEAST)
        wake = min(due, renewed + LEASE_SECONDS / 3, start + seconds)
        time.sleep(max(0.0, wake - time.monotonic()))
    keep()
    end = Watermark.model_validate({"updatedAt": started_at + timedelta(seconds=seconds)})
    store.save_watermark(end)  # the last, at the end
    checkpoints += 1
    store.record_run(
        RunSummary(
            trigger="schedule",
            started_at=started_at,
            finished_at=datetime.now(UTC),
            result=RunResult.SUCCESS,
            rows_read=1000,
            rows_synced=1000,
            watermark=started_at + timedelta(seconds=seconds),
        )
    )
    claim.release()
    return checkpoints, deferred


def run_all(
    configuration: client.Configuration, namespace: str, names: list[str], seconds: float, *, adaptive: bool
) -> dict[str, Any]:
    """All runs at once (one thread each; one API client per 50 runs, as a pod has its own connections)."""
    configuration.connection_pool_maxsize = 50
    clients = [CountingApiClient(configuration) for _ in range(0, len(names), 50)]
    kubes = [Kube(c, retry_seconds=min(API_RETRY_SECONDS, LEASE_SECONDS / 6)) for c in clients]  # the runner's
    first = next(CountingApiClient.counter)
    checkpoints: Counter[int] = Counter()
    lock = threading.Lock()
    start = time.monotonic()

    failed: Counter[str] = Counter()
    let_fail: Counter[str] = Counter()

    def one(i: int) -> None:
        try:
            done, deferred = run_once(kubes[i // 50], namespace, names[i], seconds, adaptive=adaptive)
        except Exception as exc:  # a run that lost its claim under load, say: counted, not fatal to the others
            with lock:
                failed[type(exc).__name__] += 1
            return
        with lock:
            checkpoints[done] += 1
            let_fail.update(deferred)

    try:
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(one, range(len(names))))
    finally:
        for c in clients:
            c.close()
    requests = next(CountingApiClient.counter) - first - 1
    return {
        "runs": len(names),
        "wall_seconds": round(time.monotonic() - start, 1),
        "runner_requests": requests,
        "checkpoints_per_run": round(sum(k * v for k, v in checkpoints.items()) / max(checkpoints.total(), 1), 1),
        "runs_failed": dict(failed),
        "calls_failed_runs_went_on": dict(let_fail),
    }
