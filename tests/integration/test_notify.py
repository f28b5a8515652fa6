"""Failure e-mail through a real SMTP server on loopback (aiosmtpd): one message per distinct sync-level failure,
none for row errors, STARTTLS and login, no secret value in the message."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cdi_operator.api.models import CdiIntegration, RunResult, RunSummary
from cdi_operator.controller.notify import NotifyError, SmtpSettings, failure_key, notify_failure

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
SMTP_PASSWORD = "smtp-secret-password"


@dataclass
class Inbox:
    messages: list[tuple[list[str], Message]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.original_content)))
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"cdi" and data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def plain_smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdi-test-smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "smtp.crt", tmp / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[Inbox, int, Path]]:
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, port = Inbox(), _free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,
    )
    controller.start()
    try:
        yield inbox, port, cert
    finally:
        controller.stop()


def integration(emails: list[str]) -> CdiIntegration:
    return CdiIntegration.model_validate(
        {
            "metadata": {"name": "users", "namespace": "team-a"},
            "spec": {
                "credentialRef": {"name": "wh"},
                "source": {"database": "dev", "schema": "crm", "table": "users"},
                "dataType": "customAttributes",
                "schedule": "0 * * * *",
                "contactEmails": emails,
            },
        }
    )


def run(result: RunResult, minutes: int = 0, message: str = "") -> RunSummary:
    started = START + dt.timedelta(minutes=minutes)
    return RunSummary(
        trigger="schedule",
        job="users-29512345",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=7),
        result=result,
        rows_read=10,
        rows_synced=4,
        message=message,
    )


def test_one_message_per_distinct_failure_and_none_for_row_errors(plain_smtp: tuple[Inbox, int]) -> None:
    inbox, port = plain_smtp
    settings = SmtpSettings(host="127.0.0.1", port=port, from_addr="cdi@example.com", starttls=False)
    target = integration(["ops@example.com", "data@example.com"])
    failed = run(RunResult.ERROR, message="Braze refused the key (HTTP 401): check the REST API key in the Secret")

    key = notify_failure(settings, target, failed, reason="BrazeUnauthorized")

    assert key == failure_key(target, failed, "BrazeUnauthorized")
    assert key == "team-a/users|BrazeUnauthorized|2026-03-01T12:00:00+00:00"
    assert len(inbox.messages) == 1
    recipients, message = inbox.messages[0]
    assert recipients == ["ops@example.com", "data@example.com"]
    assert message["Subject"] == "[cdi] sync of team-a/users failed: BrazeUnauthorized"
    assert message["From"] == "cdi@example.com"
    body = message.get_payload()
    assert isinstance(body, str)
    assert "dev.crm.users" in body and "Braze refused the key" in body and "users-29512345" in body

    # the same failure again: nothing; a later failed run: one more
    assert notify_failure(settings, target, failed, reason="BrazeUnauthorized", last_key=key) is None
    later = run(RunResult.ERROR, minutes=60, message="still refused")
    assert notify_failure(settings, target, later, reason="BrazeUnauthorized", last_key=key) is not None
    assert len(inbox.messages) == 2

    # row errors, limits, runs in progress and successes are never e-mailed
    for result in (RunResult.PARTIAL, RunResult.SUCCESS, RunResult.LIMIT_EXCEEDED, RunResult.RUNNING):
        assert failure_key(target, run(result)) is None
        assert notify_failure(settings, target, run(result, minutes=120)) is None
    # nobody to tell
    assert notify_failure(settings, integration([]), run(RunResult.ERROR, minutes=180)) is None
    assert len(inbox.messages) == 2


def test_starttls_and_login_and_no_secret_in_the_message(tls_smtp: tuple[Inbox, int, Path]) -> None:
    inbox, port, ca = tls_smtp
    settings = SmtpSettings.from_env(
        {
            "CDI_SMTP_HOST": "127.0.0.1",
            "CDI_SMTP_PORT": str(port),
            "CDI_SMTP_FROM": "cdi@example.com",
            "CDI_SMTP_USERNAME": "cdi",
            "CDI_SMTP_PASSWORD": SMTP_PASSWORD,
            "CDI_SMTP_CA_FILE": str(ca),
        }
    )
    assert settings is not None and settings.starttls
    assert SMTP_PASSWORD not in repr(settings)

    assert notify_failure(settings, integration(["ops@example.com"]), run(RunResult.ERROR, message="x")) is not None

    assert len(inbox.messages) == 1
    raw = inbox.messages[0][1].as_string()
    assert SMTP_PASSWORD not in raw

    wrong = SmtpSettings(
        host="127.0.0.1", port=port, username="cdi", password="wrong-password", ca_file=str(ca), timeout=10
    )
    with pytest.raises(NotifyError, match="refused the login") as refused:
        notify_failure(wrong, integration(["ops@example.com"]), run(RunResult.ERROR, minutes=5))
    assert "wrong-password" not in str(refused.value)


def test_settings_from_the_environment() -> None:
    assert SmtpSettings.from_env({}) is None
    plain = SmtpSettings.from_env({"CDI_SMTP_HOST": "mail.internal", "CDI_SMTP_STARTTLS": "false"})
    assert plain == SmtpSettings(host="mail.internal", port=25, starttls=False)
    with pytest.raises(NotifyError, match="CDI_SMTP_PORT"):
        SmtpSettings.from_env({"CDI_SMTP_HOST": "mail.internal", "CDI_SMTP_PORT": "smtp"})


def test_an_unreachable_server_is_a_clear_error() -> None:
    settings = SmtpSettings(host="127.0.0.1", port=_free_port(), starttls=False, timeout=5)
    with pytest.raises(NotifyError, match=r"cannot send e-mail through 127\.0\.0\.1"):
        notify_failure(settings, integration(["ops@example.com"]), run(RunResult.ERROR))
