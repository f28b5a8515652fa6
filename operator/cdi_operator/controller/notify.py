"""E-mail to `spec.contactEmails` about sync-level failures (the sync alerts of spec.notifications: alerts.py).

The operator calls `notify_failure()` when it sees a finished run in status.lastSync. One message goes out per
distinct failure: `failure_key()` is `namespace/name|reason|startedAt`, and the caller keeps the last key it notified
(in status or memory) and passes it back as `last_key`; a run that is not a sync-level failure (Success, Partial —
row errors —, LimitExceeded, Running) has no key and is never notified.

The message holds the integration, its source table, the run's times, result and message, and how to look further;
it holds no secret value (none reaches this module) and no row data (row error samples carry masked identifiers,
but they are row-level and are left out).

SMTP settings come from the operator's environment (`SmtpSettings.from_env()`): `CDI_SMTP_HOST`, `CDI_SMTP_PORT`
(default 587 with STARTTLS, else 25), `CDI_SMTP_FROM`, `CDI_SMTP_STARTTLS` (true/false, default true),
`CDI_SMTP_USERNAME` and `CDI_SMTP_PASSWORD` (optional; login only when both are set), `CDI_SMTP_CA_FILE`
(optional CA bundle for the relay's certificate). `smtplib` blocks: call
`notify_failure()` from a worker thread (asyncio.to_thread).
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from cdi_operator.api.models import CdiIntegration, RunResult, RunSummary

ENV_PREFIX = "CDI_SMTP_"


class NotifyError(Exception):
    """The message could not be sent; the text names the server, never credentials."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    from_addr: str = "cdi-operator@localhost"
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # CA bundle for a relay with a private CA; the system's CAs otherwise
    timeout: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SmtpSettings | None:
        """The settings from `CDI_SMTP_*`; None when `CDI_SMTP_HOST` is unset (e-mail is off)."""
        host = environ.get(f"{ENV_PREFIX}HOST", "").strip()
        if not host:
            return None
        starttls = environ.get(f"{ENV_PREFIX}STARTTLS", "true").strip().lower() not in ("0", "false", "no", "off")
        port_text = environ.get(f"{ENV_PREFIX}PORT", "").strip()
        try:
            port = int(port_text) if port_text else (587 if starttls else 25)
        except ValueError:
            raise NotifyError(f"{ENV_PREFIX}PORT={port_text!r} is not a port number") from None
        return cls(
            host=host,
            port=port,
            from_addr=environ.get(f"{ENV_PREFIX}FROM", "").strip() or "cdi-operator@localhost",
            starttls=starttls,
            username=environ.get(f"{ENV_PREFIX}USERNAME") or None,
            password=environ.get(f"{ENV_PREFIX}PASSWORD") or None,
            ca_file=environ.get(f"{ENV_PREFIX}CA_FILE") or None,
        )


def failure_key(integration: CdiIntegration, summary: RunSummary, reason: str | None = None) -> str | None:
    """The key of the failure `summary` reports, or None when it is no sync-level failure.

    `reason` is the status reason of the failure when the caller has it (e.g. from a condition); otherwise the
    result. The run's start makes every failed run distinct, so a failure that lasts is told once per run that
    meets it; callers wanting less can pass their own coarser key as `last_key`.
    """
    if summary.result is not RunResult.ERROR:
        return None
    meta = integration.metadata
    return f"{meta.namespace}/{meta.name}|{reason or summary.result.value}|{summary.started_at.isoformat()}"


def new_message(settings: SmtpSettings, integration: CdiIntegration, subject: str, lines: list[str]) -> EmailMessage:
    """A message to spec.contactEmails with `lines` as its text."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.from_addr
    message["To"] = ", ".join(integration.spec.contact_emails)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="cdi.ingest.dev")
    message.set_content("\n".join(lines))
    return message


def run_lines(integration: CdiIntegration, summary: RunSummary, reason: str | None = None) -> list[str]:
    """What a message tells about one run: source, trigger, times, result, rows, watermark."""
    finished = summary.finished_at.isoformat() if summary.finished_at else "-"
    return [
        f"Source:     {integration.spec.source.display()} ({integration.spec.data_type.value})",
        f"Trigger:    {summary.trigger}" + (f" (Job {summary.job})" if summary.job else ""),
        f"Started:    {summary.started_at.isoformat()}",
        f"Finished:   {finished}",
        f"Result:     {summary.result.value}" + (f" ({reason})" if reason else ""),
        f"Message:    {summary.message or '-'}",
        f"Rows:       read {summary.rows_read}, synced {summary.rows_synced}, failed {summary.rows_failed}",
        f"Watermark:  {summary.watermark.isoformat() if summary.watermark else '-'}",
    ]


def build_message(
    settings: SmtpSettings, integration: CdiIntegration, summary: RunSummary, reason: str | None = None
) -> EmailMessage:
    meta = integration.metadata
    key = f"{meta.namespace}/{meta.name}"
    lines = [
        f"The sync of CdiIntegration {key} failed as a whole; rows after the last watermark were not all sent.",
        "",
        *run_lines(integration, summary, reason),
        "",
        "The next scheduled run starts from the watermark; nothing is lost. To look further:",
        f"  kubectl -n {meta.namespace} describe cdi {meta.name}",
        "",
        "You get this because spec.contactEmails lists you. Row-level errors are e-mailed only above "
        "spec.notifications.rowErrorRatePercent; see status.runs.",
    ]
    subject = f"[cdi] sync of {key} failed" + (f": {reason}" if reason else "")
    return new_message(settings, integration, subject, lines)


def notify_failure(
    settings: SmtpSettings,
    integration: CdiIntegration,
    summary: RunSummary,
    *,
    reason: str | None = None,
    last_key: str | None = None,
) -> str | None:
    """Send one e-mail about the failure `summary` reports; returns its key when a message was sent.

    Nothing is sent (None) when the run is not a sync-level failure, nobody is listed in spec.contactEmails, or
    the key equals `last_key` (already told). Raises NotifyError when the server refuses or cannot be reached.
    """
    key = failure_key(integration, summary, reason)
    if key is None or key == last_key or not integration.spec.contact_emails:
        return None
    send(settings, build_message(settings, integration, summary, reason), integration.spec.contact_emails)
    return key


def send(settings: SmtpSettings, message: EmailMessage, recipients: Sequence[str]) -> None:
    """Deliver `message` to `recipients` through the SMTP server; raises NotifyError when it refuses or cannot be
    reached."""
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=settings.ca_file))
            if settings.username and settings.password:
                smtp.login(settings.username, settings.password)
            smtp.send_message(message, to_addrs=list(recipients))
    except smtplib.SMTPAuthenticationError as exc:
        raise NotifyError(
            f"SMTP server {settings.host}:{settings.port} refused the login of {settings.username!r} "
            f"({exc.smtp_code}); check {ENV_PREFIX}USERNAME / {ENV_PREFIX}PASSWORD"
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise NotifyError(
            f"cannot send e-mail through {settings.host}:{settings.port}: {type(exc).__name__}: {exc}"
        ) from None
