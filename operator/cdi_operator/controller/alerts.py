"""Sync alerts (spec.notifications): which rules a finished run fires, the one e-mail about them, and the record in
status.notifiedRuns that keeps a run from being told twice.

The first reconcile that sees a run finished (its record in status.runs) decides it, each newly finished run in the
order they finished: the rules it fires (`fired`) go out in one message to spec.contactEmails, and
status.notifiedRuns gets the run's attempt (`attempt_key`, the runner's runId: each attempt is decided once, also when
nothing fired, so that a rule switched on later does not tell about old runs) and each rule told for the run
(`run_key|rule`). A run is its Job, whose retries are one run to its users: a retry of a Job that
was told "row errors above 5%" is not told again, though a retry that then succeeds is told "succeeded" once.
Nothing is recorded while the SMTP server refuses, so the message is sent once it accepts.

Sync-level failures are not decided here: they keep their once-per-failure key (observability.py);
`onSyncError: false` switches them off.
"""

from __future__ import annotations

from collections import Counter
from email.message import EmailMessage

from cdi_operator.api.json import JSON
from cdi_operator.api.models import CdiIntegration, NotificationsSpec, RunResult, RunSummary
from cdi_operator.api.reasons import Alert
from cdi_operator.controller import metrics, notify

MAX_RECORDS = 50  # status.notifiedRuns, newest first: each run adds one to four, the history holds ten


def attempt_key(summary: RunSummary) -> str:
    """One attempt at a run (a pod of the Job, or a local run): the runner's runId; records written before runs had
    ids are known by the run's key and their start."""
    return summary.run_id or f"{run_key(summary)}@{summary.started_at.isoformat()}"


def run_key(summary: RunSummary) -> str:
    """A run: its Job (retries included), else the runner's runId, else its start."""
    return summary.job or summary.run_id or summary.started_at.isoformat()


def row_error_percent(summary: RunSummary) -> float | None:
    """Row errors as a percentage of the rows the run sent or refused; None when it had none of either."""
    judged = summary.rows_synced + summary.rows_failed
    return None if judged == 0 else 100.0 * summary.rows_failed / judged


def fired(rules: NotificationsSpec, summary: RunSummary) -> list[Alert]:
    """The rules a finished run fires. A run that failed as a whole fires none of them (it is a sync-level failure,
    told by observability.py); one that stopped at maxRowsPerRun (LimitExceeded) can fire the row-error rate only."""
    if summary.finished_at is None or summary.result in (RunResult.RUNNING, RunResult.ERROR):
        return []
    alerts: list[Alert] = []
    rate = row_error_percent(summary)
    if rules.row_error_rate_percent is not None and rate is not None and rate > rules.row_error_rate_percent:
        alerts.append(Alert.ROW_ERROR_RATE)
    if summary.result in metrics.SUCCESSFUL:
        if rules.on_success:
            alerts.append(Alert.SUCCEEDED)
        if rules.on_success_without_changes and summary.rows_synced + summary.rows_failed == 0:
            alerts.append(Alert.NO_CHANGES)
    return alerts


def due(integration: CdiIntegration, summary: RunSummary, status: JSON) -> list[Alert] | None:
    """The rules to tell about `summary` (the last finished run): None when it was decided already (or is not
    finished), else the rules it fires that were not told for its run yet (possibly none)."""
    if summary.finished_at is None or summary.result is RunResult.RUNNING:
        return None
    records = set(status.get("notifiedRuns") or [])
    if attempt_key(summary) in records:
        return None
    told = run_key(summary)
    return [alert for alert in fired(integration.spec.notifications, summary) if f"{told}|{alert}" not in records]


def recorded(status: JSON, summary: RunSummary, alerts: list[Alert]) -> list[str]:
    """The new status.notifiedRuns once `summary` is decided with `alerts` told."""
    new = [attempt_key(summary), *(f"{run_key(summary)}|{alert}" for alert in alerts)]
    old = [r for r in status.get("notifiedRuns") or [] if isinstance(r, str) and r not in new]
    return [*new, *old][:MAX_RECORDS]


def _headline(alert: Alert, summary: RunSummary, rules: NotificationsSpec) -> str:
    if alert is Alert.ROW_ERROR_RATE:
        return (
            f"{row_error_percent(summary):.1f}% row errors, above {rules.row_error_rate_percent:g}% "
            f"({summary.rows_failed} of {summary.rows_synced + summary.rows_failed} rows)"
        )
    if alert is Alert.NO_CHANGES:
        return "synced, no changed rows"
    errors = f", {summary.rows_failed} row error(s)" if summary.rows_failed else ""
    return f"synced {summary.rows_synced} row(s){errors}"


def build_message(
    settings: notify.SmtpSettings, integration: CdiIntegration, summary: RunSummary, alerts: list[Alert]
) -> EmailMessage:
    """One message about the rules `summary` fired; its `X-CDI-Alert` header names them for mail filters."""
    meta = integration.metadata
    key = f"{meta.namespace}/{meta.name}"
    rules = integration.spec.notifications
    headlines = [_headline(alert, summary, rules) for alert in alerts]
    lines = [f"A sync of CdiIntegration {key}: {'; '.join(headlines)}.", "", *notify.run_lines(integration, summary)]
    if Alert.ROW_ERROR_RATE in alerts and summary.row_errors:
        by_reason = Counter(sample.reason for sample in summary.row_errors)
        lines += [
            f"Reasons:    {', '.join(f'{reason} {n}' for reason, n in by_reason.most_common())} "
            f"(of a sample of {len(summary.row_errors)}; the rows are in status.runs)",
        ]
    lines += [
        "",
        "To look further:",
        f"  kubectl -n {meta.namespace} get cdi {meta.name} -o yaml",
        "",
        "You get this because spec.contactEmails lists you and spec.notifications asks for "
        f"{', '.join(alerts)}; each is told once per run.",
    ]
    message = notify.new_message(settings, integration, f"[cdi] {key}: {'; '.join(headlines)}", lines)
    message["X-CDI-Alert"] = ", ".join(alerts)
    return message
