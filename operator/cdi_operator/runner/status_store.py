"""The StateStore of a runner pod: the watermark and the last sync in the CdiIntegration's status.

The runner owns exactly two status fields, `status.watermark` and `status.lastSync`; the operator owns the rest
(`conditions`, `phase`, `runs`, …; a run clears `status.pendingRewind` when it applies it, see rewind.py). Every
write is a JSON merge patch of only those two fields to `/status`, with `metadata.resourceVersion` as a
precondition; on a conflict (409) the store re-reads the object and sends the same fields again with the new
resourceVersion, a few times. Since the fields are the runner's alone, re-sending them is
always right; the precondition guards against writing on top of an object that was deleted and re-created.

A merge patch replaces lists and deletes keys whose value is null, so the store sends each of its objects whole,
with unset fields as null: a field of an earlier lastSync never survives into the next.

The runner calls the store from worker threads (asyncio.to_thread), one call at a time per run; a lock keeps the
cached resourceVersion consistent anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from cdi_operator.api.models import CDI_PLURAL, RunSummary, Watermark
from cdi_operator.kube import Conflict, Kube

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5


class StatusStoreError(Exception):
    """The status cannot be read or written; the message says which object and why."""


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
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.resource_version = resource_version
        self.braze_requests = braze_requests  # live counts; copied into the summary record_run writes
        self.job = job  # the Job of this run, written into the summaries that have none
        self.rewound_to: str | None = None  # the rewind this run applied (rewind.py), likewise
        self.retries = retries
        self.conflicts = 0  # 409s met, for tests and logs
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _get(self) -> dict[str, Any]:
        obj = self.kube.get_custom(CDI_PLURAL, self.namespace, self.name)
        self.resource_version = obj.get("metadata", {}).get("resourceVersion")
        return obj

    def _patch(self, fields: dict[str, Any]) -> None:
        with self._lock:
            if self.resource_version is None:
                self._get()
            for attempt in range(self.retries + 1):
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
                self.resource_version = obj.get("metadata", {}).get("resourceVersion")
                return

    def load_watermark(self) -> Watermark | None:
        with self._lock:
            raw = (self._get().get("status") or {}).get("watermark")
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
        self._patch({"watermark": watermark.model_dump(mode="json", by_alias=True)})

    def mark_running(self, summary: RunSummary) -> None:
        """Show a run in progress in status.lastSync (result Running)."""
        self._patch({"lastSync": self._whole(summary)})

    def record_run(self, summary: RunSummary) -> None:
        if self.braze_requests and summary.braze_requests is None:
            summary = summary.model_copy(update={"braze_requests": dict(self.braze_requests)})
        self._patch({"lastSync": self._whole(summary)})

    def _whole(self, summary: RunSummary) -> dict[str, Any]:
        """The summary with unset fields as null, so that a merge patch removes them from the previous lastSync."""
        if summary.job is None and self.job is not None:
            summary = summary.model_copy(update={"job": self.job})
        if summary.rewound_to is None and self.rewound_to is not None:
            summary = summary.model_copy(update={"rewound_to": self.rewound_to})
        return summary.model_dump(mode="json", by_alias=True)
