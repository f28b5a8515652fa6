"""The `cdi.ingest.dev/sync-now` annotation: any new value starts one sync now, handled once per value.

The Job is made from the CronJob's jobTemplate with a name derived from the value, so that an operator restarted
after creating it (but before recording the value in status.lastHandledSyncNow) cannot create a second one.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cdi_operator.api.models import SYNC_NOW_ANNOTATION
from cdi_operator.kube.objects import controller_reference
from cdi_operator.runner.contract import FLAG_TRIGGER, TRIGGER_SYNC_NOW

TRIGGER_LABEL = "cdi.ingest.dev/trigger"
SYNC_NOW_VALUE_ANNOTATION = "cdi.ingest.dev/sync-now-value"
JOB_NAME_MAX = 63  # Job names become the `job-name` label of their pods


class Decision(StrEnum):
    NOTHING = "Nothing"  # no annotation, or its value was handled
    CREATE = "Create"  # create the Job, then record the value
    BUSY = "Busy"  # a sync is running: Warning Event, record the value
    REFUSED = "Refused"  # the integration is not Active: Warning Event, record the value


@dataclass(frozen=True)
class SyncNow:
    decision: Decision
    value: str | None = None
    message: str = ""


def requested_value(obj: dict[str, Any]) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(SYNC_NOW_ANNOTATION)
    return value if isinstance(value, str) and value != "" else None


def job_finished(job: dict[str, Any]) -> bool:
    status = job.get("status") or {}
    return any(
        c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget") and c.get("status") == "True"
        for c in status.get("conditions") or []
    ) or bool(status.get("completionTime"))


def sync_running(jobs: list[dict[str, Any]], last_sync: dict[str, Any] | None) -> str | None:
    """Why a sync counts as running (a message), or None. A Job without a terminal condition is running (also one
    just created whose pod does not exist yet); a lastSync still `Running` counts unless the Job it names is known
    to have finished or is gone (a runner killed mid-run leaves `Running` behind)."""
    unfinished = [j["metadata"]["name"] for j in jobs if not job_finished(j)]
    if unfinished:
        return f"Job {unfinished[0]} has not finished"
    if isinstance(last_sync, dict) and last_sync.get("result") == "Running":
        job = last_sync.get("job")
        if job is None:
            return f"status.lastSync is Running since {last_sync.get('startedAt')}"
    return None


def decide(obj: dict[str, Any], phase: str | None, jobs: list[dict[str, Any]]) -> SyncNow:
    value = requested_value(obj)
    status = obj.get("status") or {}
    if value is None or value == status.get("lastHandledSyncNow"):
        return SyncNow(Decision.NOTHING)
    if phase != "Active":
        return SyncNow(
            Decision.REFUSED,
            value,
            f"sync-now {value!r} refused: the integration is {phase or 'not ready'}, not Active; "
            "annotate again once it is Active",
        )
    running = sync_running(jobs, status.get("lastSync"))
    if running:
        return SyncNow(
            Decision.BUSY,
            value,
            f"sync-now {value!r} ignored: a sync is already running ({running}); annotate again when it finishes",
        )
    return SyncNow(Decision.CREATE, value)


def job_name(cronjob_name: str, value: str) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    stem = cronjob_name[: JOB_NAME_MAX - len("-now-") - len(digest)].rstrip("-.")
    return f"{stem}-now-{digest}"


def build_job(cronjob: dict[str, Any], value: str) -> dict[str, Any]:
    """A Job from the CronJob's jobTemplate, owned by the CronJob as the CronJob controller does (so that the
    CronJob's concurrencyPolicy and history limits cover it), with `--trigger syncNow`."""
    meta = cronjob["metadata"]
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    template_meta = template.get("metadata") or {}
    spec = template["spec"]
    for container in spec["template"]["spec"]["containers"]:
        args = list(container.get("args") or [])
        if FLAG_TRIGGER in args and args.index(FLAG_TRIGGER) + 1 < len(args):
            args[args.index(FLAG_TRIGGER) + 1] = TRIGGER_SYNC_NOW
        elif args:
            args += [FLAG_TRIGGER, TRIGGER_SYNC_NOW]
        container["args"] = args
    labels = {**(template_meta.get("labels") or {}), TRIGGER_LABEL: TRIGGER_SYNC_NOW}
    pod_meta = spec["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), TRIGGER_LABEL: TRIGGER_SYNC_NOW}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(meta["name"], value),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {
                **(template_meta.get("annotations") or {}),
                "cronjob.kubernetes.io/instantiate": "manual",
                SYNC_NOW_VALUE_ANNOTATION: value[:256],
            },
            "ownerReferences": [controller_reference("batch/v1", "CronJob", meta)],
        },
        "spec": spec,
    }
