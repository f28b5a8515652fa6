"""A runner pod applies the rewind the operator accepted (`status.pendingRewind`, see controller/rewind.py).

Before it reads anything, the run replaces `status.watermark` by the rewound one (`full`: none; a time T: T with
`boundaryComplete`, so that exactly the rows with UPDATED_AT after T are read again) and clears
`status.pendingRewind`, in one patch with the resourceVersion it decided on as a precondition: a rewind accepted in
between is never cleared unseen, and a checkpoint of another run in between is overwritten by the rewind only after
the decision was taken again on it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from cdi_operator.api.models import CDI_PLURAL, REWIND_FULL, PendingRewind, Watermark
from cdi_operator.kube import Conflict
from cdi_operator.runner.status_store import CONFLICT_RETRIES, CrStatusStore, StatusStoreError

log = logging.getLogger(__name__)


def rewound_watermark(rewind: PendingRewind, source: str | None) -> Watermark | None:
    if rewind.to is None:
        return None
    return Watermark(updated_at=rewind.to, boundary_complete=True, source=source)


def apply_pending_rewind(store: CrStatusStore, source: str | None) -> str | None:
    """Applies status.pendingRewind, if any, and returns what the run record says (`full` or the time)."""
    for attempt in range(CONFLICT_RETRIES + 1):
        obj = store.kube.get_custom(CDI_PLURAL, store.namespace, store.name)
        raw: Any = (obj.get("status") or {}).get("pendingRewind")
        if not raw:
            return None
        try:
            rewind = PendingRewind.model_validate(raw)
        except ValidationError as exc:
            raise StatusStoreError(
                f"CdiIntegration {store.key}: status.pendingRewind is invalid ({exc.errors()[0]['msg']}); remove it "
                "and annotate cdi.ingest.dev/rewind again"
            ) from None
        watermark = rewound_watermark(rewind, source)
        fields = {
            "watermark": None if watermark is None else watermark.model_dump(mode="json", by_alias=True),
            "pendingRewind": None,
        }
        try:
            patched = store.kube.patch_status(
                CDI_PLURAL, store.namespace, store.name, fields, obj["metadata"].get("resourceVersion")
            )
        except Conflict:
            log.debug("%s: status changed while applying the rewind, deciding again (attempt %d)", store.key, attempt)
            time.sleep(min(0.05 * 2**attempt, 1.0))
            continue
        store.resource_version = patched.get("metadata", {}).get("resourceVersion")
        applied = REWIND_FULL if rewind.to is None else rewind.to.isoformat()
        log.info("%s: rewind %r applied: re-sending %s", store.key, rewind.value, _what(rewind))
        return applied
    raise StatusStoreError(f"CdiIntegration {store.key}: status kept changing while applying the rewind")


def _what(rewind: PendingRewind) -> str:
    return "every row" if rewind.to is None else f"the rows after {rewind.to.isoformat()}"
