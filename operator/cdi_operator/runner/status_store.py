"""The StateStore of a runner pod: the watermark and the run records in the CdiIntegration's status.

The runner owns `status.watermark`, `status.lastSync` (its latest run that was not skipped) and its own records in
`status.runs` (run_record.py); the operator owns the rest (`conditions`, `phase`, `countedRuns`, …; a run clears
`status.pendingRewind` when it applies it, see rewind.py). Every write is a JSON merge patch of only those fields
to `/status`, built from the object as last read and sent with that object's `metadata.resourceVersion` as a
precondition. On a conflict (409) the store re-reads the object and builds the patch again, a few times; a
watermark is written only while

- the run still holds its claim on the integration (`claim.check()`, runner/claim.py), checked before every
  checkpoint, and
- `status.watermark` is still what this run last read or wrote: a watermark another writer put there meanwhile is
  never overwritten (`WatermarkMoved`). A watermark write that got no answer (a timeout, a reset, a 500 or 504
  of an overloaded API server) may have been applied all the same, so the value it carried counts as this run's too
  until a write is answered: an overloaded API server must not stop a run with its own watermark.

A merge patch replaces lists and deletes keys whose value is null, so the store sends each of its objects whole,
with unset fields as null: a field of an earlier lastSync never survives into the next.

The runner calls the store from worker threads (asyncio.to_thread), one call at a time per run; a lock keeps the
cached object consistent anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from cdi_operator.api.models import CDI_PLURAL, RunResult, RunSummary, Watermark
from cdi_operator.kube import Conflict, Kube, KubeError
from cdi_operator.runner.run_record import merged_runs
from cdi_operator.runner.state import CheckpointDeferred

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5
_UNKNOWN: Any = object()


class StatusStoreError(Exception):
    """The status cannot be read or written; the message says which object and why."""


class WatermarkMoved(StatusStoreError):
    """status.watermark was changed by another writer since this run read it."""


class Claim(Protocol):
    def check(self) -> None:
        """Raise (a StatusStoreError) unless the run still holds its integration."""


class CrStatusStore:
    """StateStore on CdiIntegration `namespace/name`'s status. See the module docstring."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        *,
        resource_version: str | None = None,
        braze_requests: Mapping[str, int] | None = None,
        job: str | None = None,
        retries: int = CONFLICT_RETRIES,
        run_id: str | None = None,
        pod: str | None = None,
        run_history: int = 10,
        claim: Claim | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.resource_version = resource_version
        self.braze_requests = braze_requests  # live counts; copied into the summary record_run writes
        self.job = job  # the Job of this run, written into the summaries that have none
        self.rewound_to: str | None = None  # the rewind this run applied (rewind.py), likewise
        self.run_id = run_id  # likewise this run's id and pod
        self.pod = pod
        self.run_history = run_history
        self.claim = claim  # guards every watermark write once set
        self.retries = retries
        self.conflicts = 0  # 409s met, for tests and logs
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None  # of the object at resource_version, when read
        self._watermark_seen: Any = _UNKNOWN  # status.watermark as this run last read or wrote it
        self._watermark_unanswered: list[Any] = []  # the watermarks of writes unanswered since the last answered

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _get(self) -> dict[str, Any]:
        obj = self.kube.get_custom(CDI_PLURAL, self.namespace, self.name)
        self._seen(obj)
        return obj

    def _seen(self, obj: dict[str, Any]) -> None:
        self.resource_version = obj.get("metadata", {}).get("resourceVersion")
        self._status = dict(obj.get("status") or {})

    def _patch(self, build: Callable[[dict[str, Any]], dict[str, Any]], *, watermark: bool = False) -> None:
        """Send `build(status as last read)`, re-reading and building again on a conflict; `watermark`: a guarded
        watermark write (see the module docstring)."""
        with self._lock:
            if self.resource_version is None or (self._status is None and not watermark):
                self._get()  # a record is merged into the runs read; a watermark needs only the version
            for attempt in range(self.retries + 1):
                status = self._status or {}
                if watermark:
                    if self.claim is not None:
                        self.claim.check()
                    seen = self._watermark_seen
                    if seen is not _UNKNOWN and status.get("watermark") not in (seen, *self._watermark_unanswered):
                        raise WatermarkMoved(
                            f"CdiIntegration {self.key}: status.watermark was changed by another writer since this "
                            "run read it; this run stops without overwriting it"
                        )
                fields = build(status)
                try:
                    obj = self.kube.patch_status(CDI_PLURAL, self.namespace, self.name, fields, self.resource_version)
                except Conflict:
                    self.conflicts += 1
                    if attempt == self.retries:
                        raise StatusStoreError(
                            f"CdiIntegration {self.key}: status kept changing, gave up after {attempt + 1} conflicts"
                        ) from None
                    log.debug("%s: status conflict, re-reading (attempt %d)", self.key, attempt + 1)
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    self._get()
                    continue
                except KubeError as exc:
                    if watermark and exc.maybe_applied:
                        self._watermark_unanswered.append(_merged(fields.get("watermark")))
                    raise
                self._seen(obj)
                if watermark:  # a record leaves the watermark as it found it, which may be another writer's
                    self._watermark_unanswered.clear()
                    self._watermark_seen = (self._status or {}).get("watermark")
                return

    def load_watermark(self) -> Watermark | None:
        with self._lock:
            raw = (self._get().get("status") or {}).get("watermark")
            self._watermark_seen = raw
        if raw is None:
            return None
        try:
            return Watermark.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise StatusStoreError(
                f"CdiIntegration {self.key}: status.watermark.{where}: {error['msg']}; remove status.watermark "
                "to sync everything again"
            ) from None

    def save_watermark(self, watermark: Watermark) -> None:
        fields = {"watermark": watermark.model_dump(mode="json", by_alias=True)}
        try:
            self._patch(lambda _status: fields, watermark=True)
        except KubeError as exc:
            if exc.transient:  # after the Kube's own retries
                raise CheckpointDeferred(exc.message) from None
            raise

    def mark_running(self, summary: RunSummary) -> None:
        """Show a run in progress in status.lastSync and status.runs (result Running)."""
        self._record(summary, last_sync=True)

    def record_run(self, summary: RunSummary) -> None:
        if self.braze_requests and summary.braze_requests is None:
            summary = summary.model_copy(update={"braze_requests": dict(self.braze_requests)})
        self._record(summary, last_sync=True)

    def record_history_only(self, summary: RunSummary) -> None:
        """Into status.runs only, for a run that does not hold the integration (skipped, or its claim lost):
        lastSync stays the run that holds it."""
        self._record(summary, last_sync=False)

    def close_abandoned(self, run_id: str, message: str, now: datetime) -> None:
        """The record of run `run_id`, still Running though its claim expired (its runner was killed), becomes an
        Error that says so; nothing when there is no such record."""

        def build(status: dict[str, Any]) -> dict[str, Any]:
            runs = [r for r in status.get("runs") or [] if isinstance(r, dict)]
            for index, run in enumerate(runs):
                if run.get("runId") == run_id and run.get("result") == RunResult.RUNNING.value:
                    closed = {**run, "result": RunResult.ERROR.value, "finishedAt": _rfc3339(now), "message": message}
                    return {"runs": [*runs[:index], closed, *runs[index + 1 :]]}
            return {}

        self._patch(build)

    def _record(self, summary: RunSummary, *, last_sync: bool) -> None:
        record = self._whole(summary)

        def build(status: dict[str, Any]) -> dict[str, Any]:
            fields: dict[str, Any] = {"runs": merged_runs(status.get("runs"), record, self.run_history)}
            if last_sync:
                fields["lastSync"] = record
            return fields

        self._patch(build)

    def _whole(self, summary: RunSummary) -> dict[str, Any]:
        """The summary with this run's identity (and the rewind it applied) and unset fields as null, so that a
        merge patch removes them from the previous lastSync."""
        identity = {"job": self.job, "run_id": self.run_id, "pod": self.pod, "rewound_to": self.rewound_to}
        missing = {k: v for k, v in identity.items() if getattr(summary, k) is None and v is not None}
        if missing:
            summary = summary.model_copy(update=missing)
        return summary.model_dump(mode="json", by_alias=True)


def _merged(value: Any) -> Any:
    """`value` as a merge patch leaves it in the object: without its null fields."""
    if isinstance(value, dict):
        return {k: _merged(v) for k, v in value.items() if v is not None}
    return value


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
