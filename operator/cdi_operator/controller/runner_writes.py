"""Which watch events of a CdiIntegration only a running sync's progress made, so that the operator skips them.

A runner checkpoints its watermark during a run (runner/cadence.py), and each checkpoint is a status patch, so a
watch event. Nothing the operator decides depends on that progress: its reconcile reads the spec, the
annotations, its own status fields and the runs' records, and acts when a run starts or finishes (metrics, Events,
e-mail, sync alerts, the Synced condition all come from status.runs and status.lastSync). So an event whose object
differs from the last one reconciled only in

- `status.watermark`,
- the progress of a record that is still Running (its row counts, watermark, errors so far, Braze requests; its
  identity and result stay in), and
- `metadata.resourceVersion` and `metadata.managedFields`,

is skipped; only the watermark gauge is set from it, which costs no API call. Every other change is reconciled as
before, and the periodic resync still reconciles every integration, which covers what depends on time alone.

So is the event of the operator's own status write, when the API server's answer to it is the object as that
reconcile read it with the status as it wrote it (`Digests.own`): the reconcile has already acted on everything
in it. That was a second reconcile of every integration that became Active (its "testing" and its Active writes),
with its reads and its CronJob apply. An answer that shows anything else (a spec or annotation changed meanwhile,
a run's record) is not the operator's own, and its event is reconciled.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

import orjson

from cdi_operator.api.json import JSON
from cdi_operator.api.models import RunResult

RUNNER_PROGRESS = ("watermark",)  # of status: written at every checkpoint
RUNNING_RECORD_PROGRESS = (
    "rowsRead",
    "rowsSynced",
    "rowsFailed",
    "rowsSkipped",
    "watermark",
    "message",
    "rowErrorsByReason",
    "rowErrors",
    "brazeRequests",
)
VOLATILE_METADATA = ("resourceVersion", "managedFields")
OWN_WRITES_KEPT = 4  # per integration: a reconcile writes its status at most twice (a test's "testing", then its end)


def _without_progress(record: Any) -> Any:
    if not isinstance(record, dict) or record.get("result") != RunResult.RUNNING.value:
        return record
    return {k: v for k, v in record.items() if k not in RUNNING_RECORD_PROGRESS}


def decisive(body: JSON) -> str:
    """A digest of what the operator's reconcile depends on in `body`: equal for two versions of the object that
    differ only in the runner's progress (see the module docstring)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in VOLATILE_METADATA}
    status = {k: v for k, v in (body.get("status") or {}).items() if k not in RUNNER_PROGRESS}
    if "lastSync" in status:
        status["lastSync"] = _without_progress(status["lastSync"])
    if isinstance(status.get("runs"), list):
        status["runs"] = [_without_progress(r) for r in status["runs"]]
    kept = {**{k: v for k, v in body.items() if k not in ("metadata", "status")}, "metadata": meta, "status": status}
    return hashlib.sha256(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Digests:
    """What each integration looked like when it was last reconciled, by (namespace, name), and as the operator's
    own last status writes left it."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], str] = {}
        self._own: dict[tuple[str, str], deque[str]] = {}

    def unchanged(self, namespace: str, name: str, body: JSON) -> bool:
        """True when `body` differs from the object last reconciled only in the runner's progress, or is as one of
        the operator's own last writes left it; otherwise remembers it as reconciled (call `forget` if that
        reconcile then fails)."""
        key = (namespace, name)
        digest = decisive(body)
        if self._last.get(key) == digest:
            return True
        self._last[key] = digest
        return digest in self._own.get(key, ())

    def own(self, namespace: str, name: str, body: JSON) -> None:
        """`body` is the object as a reconcile's own write left it, all of which that reconcile acted on."""
        self._own.setdefault((namespace, name), deque(maxlen=OWN_WRITES_KEPT)).append(decisive(body))

    def latest_is_own(self, namespace: str, name: str) -> bool:
        """The latest event's object is as an own write left it: the events before it need no reconcile either."""
        key = (namespace, name)
        return key in self._last and self._last[key] in self._own.get(key, ())

    def forget(self, namespace: str, name: str) -> None:
        self._last.pop((namespace, name), None)
        self._own.pop((namespace, name), None)
