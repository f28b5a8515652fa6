"""What the operator tells about runs it did not do itself: Prometheus metrics, failure e-mail and sync alerts.

Runner pods live for one sync, so the operator reads what they leave in status (their records in `status.runs`,
`watermark`) every time it reconciles an integration, and

- feeds the metrics of DESIGN.md (`metrics.py`): each finished run of `status.runs` once, also one that finished
  while the operator was down (`history.uncounted`, kept in `status.countedRuns`), the watermark, the last success,
  the integrations by phase; the series of a deleted integration are dropped;
- keeps the condition `Synced` from the latest run that was not skipped (True after Success/Partial; False with the
  failure reason after Error or LimitExceeded) and emits one Warning Event per failed run (when that condition
  changes, so never twice across a restart);
- sends one e-mail to `spec.contactEmails` per sync-level failure: a run with result Error, or an integration
  that had been syncing and is now stalled by a failed connection test (auth, permission, missing table…). Row
  errors (Partial) are e-mailed only by the sync alerts (alerts.py), and `spec.notifications.onSyncError` turns this
  off. The key of the last failure told is kept in `status.lastNotifiedFailure`, so a restarted operator does not
  tell it again; a failure that lasts (the Job's retries, the next scheduled runs, the same reason) is told once,
  until a run completes again (`already_told`).
- sends the sync alerts of `spec.notifications` (`alert`; which rules fire and the once-per-run record: alerts.py).

Everything here is a plain function of the object, apart from `Observer`, which holds the phases and the SMTP
settings of the process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from pydantic import ValidationError

from cdi_operator.api import reasons
from cdi_operator.api.json import JSON
from cdi_operator.api.models import CdiIntegration, Phase, RunResult, RunSummary
from cdi_operator.api.reasons import Alert
from cdi_operator.controller import alerts, conditions, connection, history, metrics, notify

log = logging.getLogger(__name__)

RETRY_SECONDS = 300.0  # after the SMTP server refused or could not be reached

_PREFIXED = re.compile(r"^([A-Z][A-Za-z0-9]{2,63}): ")  # WarehouseError: "PermissionDenied: …"
_BRAZE = re.compile(r"\bgot HTTP \d{3} ([A-Z][A-Za-z0-9]{1,63})\b")  # BrazeError: "POST /users/track got HTTP 401 …"


def failure_reason(summary: RunSummary) -> str:
    """The status reason of a failed run, read from its message (the runner writes the reason's name first for
    warehouse failures, the HTTP status for Braze failures); `SyncFailed` when neither."""
    if summary.result is RunResult.LIMIT_EXCEEDED:
        return RunResult.LIMIT_EXCEEDED.value
    message = summary.message or ""
    match = _PREFIXED.match(message)
    if match:
        return match.group(1)
    match = _BRAZE.search(message)
    if match:
        return f"Braze{match.group(1)}"
    return reasons.SYNC_FAILED


def last_sync(status: JSON) -> RunSummary | None:
    raw = status.get("lastSync")
    if not isinstance(raw, dict):
        return None
    try:
        return RunSummary.model_validate(raw)
    except ValidationError:
        return None


def synced_condition(summary: RunSummary | None) -> conditions.Want | None:
    """The `Synced` condition a finished lastSync asks for; None while nothing has finished."""
    if summary is None or summary.result is RunResult.RUNNING or summary.finished_at is None:
        return None
    started = conditions.timestamp(summary.started_at)
    if summary.result in metrics.SUCCESSFUL:
        message = f"the sync started {started} completed: {summary.rows_synced} row(s) synced"
        if summary.rows_failed:
            message += f", {summary.rows_failed} row error(s) (see status.runs)"
        return conditions.Want(reasons.SYNCED, "True", summary.result.value, message)
    reason = failure_reason(summary)
    return conditions.Want(
        reasons.SYNCED, "False", reason, f"the sync started {started} failed: {summary.message or reason}"
    )


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def stalled_failure(obj: JSON, status: JSON, phase_before: str | None) -> tuple[RunSummary, str] | None:
    """A sync-level stall of an integration that had been syncing, as a failed run for `notify`; else None.

    Stalled by a failed connection test (the test's reason: Unauthorized, PermissionDenied, TableMissing…), when
    the integration was Active or Suspended before this reconcile or has synced before (so also after a restart)."""
    if status.get("phase") not in (Phase.DRAFT.value, Phase.FAILED.value):
        return None
    stalled = conditions.find(status.get("conditions"), reasons.STALLED)
    if stalled is None or stalled.get("status") != "True":
        return None
    reason = str(stalled.get("reason") or "")
    test = status.get("connectionTest") or {}
    if reason in reasons.SPEC_PROBLEMS or test.get("result") != connection.FAILED or test.get("reason") != reason:
        return None
    had_been_active = phase_before in (Phase.ACTIVE.value, Phase.SUSPENDED.value) or bool(
        status.get("lastSync") or status.get("runs") or status.get("watermark")
    )
    since = _parse_time(stalled.get("lastTransitionTime"))
    if not had_been_active or since is None:
        return None
    summary = RunSummary(
        trigger="schedule",
        started_at=since,
        finished_at=since,
        result=RunResult.ERROR,
        message=f"the integration stopped syncing: {stalled.get('message') or reason}",
    )
    return summary, reason


def key_time(key: str | None) -> datetime | None:
    """The time part of a `notify.failure_key()` (`namespace/name|reason|time`)."""
    return None if not key else _parse_time(key.rpartition("|")[2])


def key_reason(key: str | None) -> str | None:
    parts = (key or "").split("|")
    return parts[1] if len(parts) == 3 else None


def already_told(key: str, last_key: str | None, runs: Any) -> bool:
    """Whether the failure `key` was told with `last_key`: the same key; an older failure (an old failed lastSync
    seen again after a stall was told); or the same reason with no completed run since (one failure that lasts,
    e.g. the Job's retries or the next scheduled runs, is told once; a success in between starts a new one)."""
    if last_key is None:
        return False
    if key == last_key:
        return True
    new, last = key_time(key), key_time(last_key)
    if last is None:
        return False
    if new is not None and new <= last:
        return True
    if key_reason(key) != key_reason(last_key):
        return False
    completed = {r.value for r in metrics.SUCCESSFUL}
    for run in runs if isinstance(runs, list) else []:
        if not isinstance(run, dict) or run.get("result") not in completed:
            continue
        finished = _parse_time(run.get("finishedAt"))
        if finished is not None and finished > last:
            return False
    return True


class Observer:
    """The operator's metrics and e-mail state: phases by integration, SMTP settings, notification retries."""

    def __init__(self, env: Any = None) -> None:
        self.metrics = metrics.default()  # its counting_since is now: runs finished before are not counted
        self._phases: dict[tuple[str, str], str] = {}
        self.metrics.set_phases({})
        try:
            self.smtp = notify.SmtpSettings.from_env() if env is None else notify.SmtpSettings.from_env(env)
        except notify.NotifyError as exc:
            log.error("failure e-mail is off: %s", exc)
            self.smtp = None
        self._smtp_off_logged = False
        self._failed_sends: dict[str, float] = {}  # key -> monotonic time of the last refused attempt

    # --- metrics ---------------------------------------------------------------------------------------------

    def connection_test(self, type_: str, result: str) -> None:
        self.metrics.observe_connection_test(type_, result)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget_integration(namespace, name)
        if self._phases.pop((namespace, name), None) is not None:
            self.metrics.set_phases(Counter(self._phases.values()))

    def observe(self, obj: JSON, status: JSON) -> list[RunSummary]:
        """Metrics from status; returns the runs counted now (to add to status.countedRuns)."""
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        phase = status.get("phase")
        if phase and self._phases.get((namespace, name)) != phase:
            self._phases[(namespace, name)] = str(phase)
            self.metrics.set_phases(Counter(self._phases.values()))
        data_type = str((obj.get("spec") or {}).get("dataType") or "")
        fresh = history.uncounted(status)
        for summary in fresh:
            self.metrics.observe_run(namespace, name, data_type, summary, key=history.run_key(summary), any_age=True)
        self.watermark(namespace, name, status)
        return fresh

    def watermark(self, namespace: str, name: str, status: JSON) -> None:
        """The watermark gauge from status.watermark (also from a checkpoint the operator does not reconcile)."""
        watermark = _parse_time((status.get("watermark") or {}).get("updatedAt"))
        if watermark is not None:
            self.metrics.set_watermark(namespace, name, watermark)

    # --- e-mail ----------------------------------------------------------------------------------------------

    def _smtp_on(self, where: str) -> bool:
        if self.smtp is None and not self._smtp_off_logged:
            self._smtp_off_logged = True
            log.warning(
                "e-mail is off ($%sHOST is not set): what %s and any other integration asks to be told is not e-mailed",
                notify.ENV_PREFIX,
                where,
            )
        return self.smtp is not None

    async def _send(self, key: str, what: str, message: EmailMessage, recipients: list[str]) -> bool:
        """Whether `message` went out; after a refusal the same key waits RETRY_SECONDS before it is tried again."""
        refused = self._failed_sends.get(key)
        if self.smtp is None or (refused is not None and time.monotonic() - refused < RETRY_SECONDS):
            return False
        try:
            await asyncio.to_thread(notify.send, self.smtp, message, recipients)
        except notify.NotifyError as exc:
            self._failed_sends[key] = time.monotonic()
            log.error("cannot e-mail %s; trying again in %.0f s: %s", what, RETRY_SECONDS, exc)
            return False
        self._failed_sends.pop(key, None)
        log.info("e-mailed %s to its %d contact(s)", what, len(recipients))
        return True

    async def notify(
        self, obj: JSON, summary: RunSummary, reason: str, last_key: str | None, runs: Any = None
    ) -> str | None:
        """Send the e-mail about this failure unless told already (`already_told`) or spec.notifications.onSyncError
        is off; the key to keep in status."""
        integration = parse(obj)
        if integration is None or not integration.spec.notifications.on_sync_error:
            return None
        key = notify.failure_key(integration, summary, reason)
        if key is None or already_told(key, last_key, runs) or not integration.spec.contact_emails:
            return None
        where = f"{integration.metadata.namespace}/{integration.metadata.name}"
        if not self._smtp_on(where):
            return None
        assert self.smtp is not None
        message = notify.build_message(self.smtp, integration, summary, reason)
        sent = await self._send(key, f"the failure of {where} ({reason})", message, integration.spec.contact_emails)
        return key if sent else None

    async def alert(self, integration: CdiIntegration, summary: RunSummary, fired: list[Alert]) -> bool:
        """Send the one e-mail about the rules of spec.notifications that `summary` fired; False when it must be
        tried again (the SMTP server refused), True when it went out or cannot (e-mail is off)."""
        where = f"{integration.metadata.namespace}/{integration.metadata.name}"
        if not self._smtp_on(where):
            return True
        assert self.smtp is not None
        message = alerts.build_message(self.smtp, integration, summary, fired)
        what = f"{', '.join(fired)} of the run {alerts.run_key(summary)} of {where}"
        return await self._send(alerts.attempt_key(summary), what, message, integration.spec.contact_emails)


def parse(obj: JSON) -> CdiIntegration | None:
    """The integration without its status (which the operator reads as JSON); None when its spec is invalid."""
    try:
        return CdiIntegration.model_validate({**obj, "status": None})
    except ValidationError:
        return None
