"""The Prometheus metrics of DESIGN.md, exported by the operator from what the runners leave in CR status.

A runner pod lives for one sync, so nothing here depends on scraping it: the runner writes its summary to
`status.lastSync` (rows, result, times, and its Braze responses by endpoint and code in `brazeRequests`), and the
operator, watching the CdiIntegrations, calls `observe_run()` with it.

Counting each run once, also across operator restarts: `observe_run()` counts a finished run only when

- its `finishedAt` is not older than the operator's start (`Metrics.counting_since`, set when the `Metrics` is
  created), so that a restarted operator, whose counters start at zero again, does not count the runs it finds in
  status as new (Prometheus' `rate()`/`increase()` handle the reset; counting old runs again would be a false
  increase) — unless the caller knows the run was never counted (`any_age`: the operator keeps the runs it counted
  in `status.countedRuns`, controller/history.py, so a run that finished while it was down is counted after its
  restart); and
- its key (`(namespace, name, startedAt)`, or the run's id) is not among the last `SEEN_RUNS` keys counted (a
  bounded memory of runs already seen, since the operator sees the same status on every change and resync).

Gauges (watermark, last success) are state rather than events; they are set from any run, old or new.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from threading import Lock
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cdi_operator.api.models import Phase, RunResult, RunSummary

SEEN_RUNS = 10_000
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
SUCCESSFUL = frozenset({RunResult.SUCCESS, RunResult.PARTIAL})  # the sync completed; row errors are not failures


class Metrics:
    """The metrics on one registry (the default registry for the module-level functions; a fresh one in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, counting_since: datetime | None = None) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.counting_since = counting_since or datetime.now(UTC)
        r = self.registry
        self.runs = Counter(
            "cdi_sync_runs",
            "Finished sync runs.",
            ["namespace", "integration", "data_type", "trigger", "result"],
            registry=r,
        )
        self.rows = Counter(
            "cdi_sync_rows",
            "Rows synced to Braze or failed (row errors), by finished runs.",
            ["namespace", "integration", "data_type", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "cdi_sync_duration_seconds",
            "Duration of finished sync runs.",
            ["namespace", "integration", "data_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.watermark = Gauge(
            "cdi_sync_watermark_timestamp_seconds",
            "UPDATED_AT of the last row delivered (the watermark), as a Unix time.",
            ["namespace", "integration"],
            registry=r,
        )
        self.last_success = Gauge(
            "cdi_sync_last_success_timestamp_seconds",
            "End of the last run that completed (Success or Partial), as a Unix time.",
            ["namespace", "integration"],
            registry=r,
        )
        self.braze_requests = Counter(
            "cdi_braze_requests",
            "Braze REST responses by endpoint and HTTP status (or a failure kind such as timeout).",
            ["endpoint", "code"],
            registry=r,
        )
        self.integrations = Gauge("cdi_integrations", "CdiIntegrations by status.phase.", ["phase"], registry=r)
        self.connection_tests = Counter(
            "cdi_connection_tests", "Connection tests by warehouse type and result.", ["type", "result"], registry=r
        )
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._last_success: dict[tuple[str, str], float] = {}
        self._lock = Lock()

    # --- runs ----------------------------------------------------------------------------------------------------

    def observe_run(
        self,
        namespace: str,
        name: str,
        data_type: str,
        summary: RunSummary,
        *,
        key: str | None = None,
        any_age: bool = False,
    ) -> bool:
        """Account for a finished run; True when it was counted now (a new finished run)."""
        if summary.watermark is not None:
            self.set_watermark(namespace, name, summary.watermark)
        if summary.result is RunResult.RUNNING or summary.finished_at is None:
            return False
        if summary.result in SUCCESSFUL:
            finished = summary.finished_at.timestamp()
            with self._lock:
                newer = finished > self._last_success.get((namespace, name), 0.0)
                if newer:
                    self._last_success[(namespace, name)] = finished
            if newer:
                self.last_success.labels(namespace, name).set(finished)
        if summary.finished_at < self.counting_since and not any_age:
            return False
        seen = (namespace, name, key or summary.started_at.isoformat())
        with self._lock:
            if seen in self._seen:
                return False
            self._seen[seen] = None
            while len(self._seen) > SEEN_RUNS:
                self._seen.popitem(last=False)
        self.runs.labels(namespace, name, data_type, summary.trigger, summary.result.value).inc()
        self.rows.labels(namespace, name, data_type, "synced").inc(summary.rows_synced)
        self.rows.labels(namespace, name, data_type, "failed").inc(summary.rows_failed)
        duration = (summary.finished_at - summary.started_at).total_seconds()
        self.duration.labels(namespace, name, data_type).observe(max(duration, 0.0))
        for label, count in (summary.braze_requests or {}).items():
            endpoint, _, code = label.rpartition(":")
            self.braze_requests.labels(endpoint or label, code).inc(count)
        return True

    def set_watermark(self, namespace: str, name: str, watermark: datetime | None) -> None:
        if watermark is None:
            if (namespace, name) in self._label_sets(self.watermark):
                self.watermark.remove(namespace, name)
            return
        self.watermark.labels(namespace, name).set(watermark.timestamp())

    def forget_integration(self, namespace: str, name: str) -> None:
        """Drop the series of a deleted CdiIntegration."""
        for metric in (self.runs, self.rows, self.duration, self.watermark, self.last_success):
            for labels in self._label_sets(metric):
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)
        with self._lock:
            self._last_success.pop((namespace, name), None)

    @staticmethod
    def _label_sets(metric: Any) -> list[tuple[str, ...]]:
        with metric._lock:
            return list(metric._metrics)

    # --- the rest ------------------------------------------------------------------------------------------------

    def set_phases(self, counts: Mapping[str, int]) -> None:
        """CdiIntegrations by phase; every known phase is exported, 0 when absent from `counts`."""
        phases = {p.value for p in Phase} | set(counts)
        for phase in phases:
            self.integrations.labels(phase).set(counts.get(phase, 0))

    def observe_connection_test(self, type_: str, result: str) -> None:
        self.connection_tests.labels(type_, result).inc()

    def braze_response_hook(self, endpoint: str, code: str) -> None:
        """For `BrazeClient(on_response=...)` in the operator's own process."""
        self.braze_requests.labels(endpoint, code).inc()


_default: Metrics | None = None
_default_lock = Lock()


def default() -> Metrics:
    """The metrics on prometheus_client's default registry, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def observe_run(namespace: str, name: str, data_type: str, summary: RunSummary) -> bool:
    return default().observe_run(namespace, name, data_type, summary)


def set_watermark(namespace: str, name: str, watermark: datetime | None) -> None:
    default().set_watermark(namespace, name, watermark)


def forget_integration(namespace: str, name: str) -> None:
    default().forget_integration(namespace, name)


def set_phases(counts: Mapping[str, int]) -> None:
    default().set_phases(counts)


def observe_connection_test(type_: str, result: str) -> None:
    default().observe_connection_test(type_, result)


def braze_response_hook(endpoint: str, code: str) -> None:
    default().braze_response_hook(endpoint, code)


def start_metrics_server(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> Any:
    """Serve /metrics on `addr:port` in a daemon thread; returns prometheus_client's (server, thread)."""
    return start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)
