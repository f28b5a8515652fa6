"""The validating admission webhook: rejects at apply time what the CRD's CEL rules cannot judge.

CEL cannot judge the cron spacing (15 minutes to a month), IANA time-zone names, or references to other objects,
so the webhook checks a CdiIntegration with the pydantic models (`spec.schedule`, `spec.timeZone`, ...) and its
references (`spec.source` fits the warehouse type of the WarehouseCredential named by `spec.credentialRef.name`),
and a WarehouseCredential with its model. Every message names the field and the fix. The same checks run in the
reconcile and land in the status (Stalled: InvalidSpec, CredentialNotFound, InvalidSource), so without the webhook,
or while the operator is down, nothing is lost but the early answer.

Apply order must not matter: Flux and Argo CD apply (Flux first dry-runs) a whole directory at once, so a credential
that does not exist yet is no refusal, only an admission warning; the integration stays Draft with the reason
CredentialNotFound until the credential appears (Kubernetes' eventual consistency).

When it judges (so that the operator's own metadata patches and deletions are never blocked): on CREATE; on UPDATE
only when `spec` changed, and the references only when `spec.credentialRef` or `spec.source` changed; never on
an object being deleted. A failed credential lookup skips the reference checks instead of rejecting.

Serving (controller/settings.py `WebhookSettings`, `$CDI_WEBHOOK_*`):

- `off` (default): no handlers, no server.
- `managed-local`: kopf serves HTTPS on addr:port and creates/keeps the ValidatingWebhookConfiguration
  `cdi.ingest.dev` (webhooks `validate-integration.cdi.ingest.dev`, `validate-credential.cdi.ingest.dev`,
  clientConfig.url https://host:port/<handler id>); the certificate is generated here (self-signed, with
  `cryptography`) unless the cert dir holds tls.crt/tls.key. On a graceful stop kopf empties the configuration's
  webhook list; after a crash it lingers, which `failurePolicy: Ignore` makes harmless.
- `chart`: serves HTTPS on addr:port with the mounted tls.crt/tls.key (re-read when they change); the chart creates
  the Service and the configuration, whose service paths are `/validate-integration` and `/validate-credential`.

`failurePolicy` is Ignore unless `$CDI_WEBHOOK_FAILURE_POLICY=Fail`: an operator outage must not block applies.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from cdi_operator.api.json import JSON
from cdi_operator.api.models import (
    CDI_PLURAL,
    GROUP,
    VERSION,
    WHC_PLURAL,
    CdiIntegrationSpec,
    WarehouseCredentialSpec,
    WarehouseType,
)
from cdi_operator.controller.settings import WEBHOOK_CERT_FILE, WEBHOOK_KEY_FILE, OperatorSettings, WebhookSettings
from cdi_operator.kube.aio import KubeApi

log = logging.getLogger(__name__)

CredentialLookup = Callable[[str], JSON | None]

CONFIGURATION_NAME = "cdi.ingest.dev"  # the kopf-managed ValidatingWebhookConfiguration
INTEGRATION_HANDLER_ID = "validate-integration"  # the URL path below the webhook server's root
CREDENTIAL_HANDLER_ID = "validate-credential"
UNPROCESSABLE = 422


# --- plain checks ---------------------------------------------------------------------------------------------------


def validation_problems(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """One message per error, naming the field (`spec.schedule: ...`), like manifests.format_validation_error."""
    problems = []
    for error in exc.errors():
        where = ".".join([prefix, *(str(part) for part in error["loc"])])
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return problems


def review_credential(obj: JSON) -> list[str]:
    """What is wrong with a WarehouseCredential's spec; empty when it is fine."""
    try:
        WarehouseCredentialSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return validation_problems(exc)
    return []


def review_integration(obj: JSON, namespace: str, lookup_credential: CredentialLookup | None) -> list[str]:
    """What is wrong with a CdiIntegration: its spec, then its references (skipped when `lookup_credential` is None
    or the spec is invalid). `lookup_credential(name)` returns the WarehouseCredential object of the namespace, or
    None when there is none."""
    try:
        spec = CdiIntegrationSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return validation_problems(exc)
    if lookup_credential is None:
        return []
    return reference_problems(spec, namespace, lookup_credential)


def reference_problems(spec: CdiIntegrationSpec, namespace: str, lookup_credential: CredentialLookup) -> list[str]:
    name = spec.credential_ref.name
    credential = lookup_credential(name)
    if credential is None:  # not (yet) there: a warning (missing_credential_warning), and the status says so
        return []
    warehouse = _warehouse_type(credential)
    if warehouse is None:  # the credential's own problems are reported on the credential
        return []
    return [
        f"{problem} (WarehouseCredential {name!r} is {warehouse.value})"
        for problem in spec.source.problems_for(warehouse)
    ]


def missing_credential_warning(name: str, namespace: str) -> str:
    return (
        f"spec.credentialRef.name: WarehouseCredential {name!r} does not exist in namespace {namespace} (yet); the "
        "integration stays Draft (reason CredentialNotFound) until it is created: apply it, or fix "
        "spec.credentialRef.name"
    )


def _warehouse_type(credential: JSON) -> WarehouseType | None:
    try:
        return WarehouseType(str((credential.get("spec") or {}).get("type")))
    except ValueError:
        return None


def _changed(old: Any, new: Any, *path: str) -> bool:
    def at(obj: Any) -> Any:
        for key in path:
            obj = obj.get(key) if isinstance(obj, dict) else None
        return obj

    return bool(at(old) != at(new))


def judge(operation: str | None, body: JSON, old: JSON | None) -> tuple[bool, bool]:
    """(check the spec, check the references) for an admission request."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False, False
    if operation == "CREATE" or old is None:
        return True, True
    if not _changed(old, body, "spec"):
        return False, False
    references = _changed(old, body, "spec", "credentialRef") or _changed(old, body, "spec", "source")
    return True, references


def rejection(kind: str, name: str | None, problems: list[str]) -> str:
    return f"{kind} {name or '(unnamed)'} is invalid: " + "; ".join(problems)


# --- kopf handlers and serving -------------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, kube: KubeApi, settings: OperatorSettings) -> None:
    """Registers the validating handlers and a startup step that configures kopf's webhook server; nothing when
    the webhook is off (kopf refuses to start with admission handlers but no server)."""
    webhook = settings.webhook
    if webhook.mode == "off":
        return
    ignore = webhook.failure_policy == "Ignore"

    @kopf.on.startup(registry=registry)
    def configure_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, webhook)

    @kopf.on.validate(
        GROUP,
        VERSION,
        CDI_PLURAL,
        id=INTEGRATION_HANDLER_ID,
        operations=["CREATE", "UPDATE"],
        ignore_failures=ignore,
        registry=registry,
    )
    async def validate_integration(**kwargs: Any) -> None:
        body, old = dict(kwargs["body"]), kwargs.get("old")
        namespace = kwargs.get("namespace") or (body.get("metadata") or {}).get("namespace") or ""
        spec_wanted, references_wanted = judge(kwargs.get("operation"), body, None if old is None else dict(old))
        if not spec_wanted:
            return
        lookup: CredentialLookup | None = None
        ref = ((body.get("spec") or {}).get("credentialRef") or {}).get("name")
        if references_wanted and isinstance(ref, str) and ref:
            try:
                credential = await kube.get(WHC_PLURAL, namespace, ref)
            except Exception as exc:  # our own read failed: let the reconcile judge the references
                log.warning("admission: cannot read WarehouseCredential %s/%s (%s); not checked", namespace, ref, exc)
            else:
                if credential is None:
                    kwargs["warnings"].append(missing_credential_warning(ref, namespace))
                lookup = lambda name: credential if name == ref else None  # noqa: E731
        problems = review_integration(body, namespace, lookup)
        if problems:
            raise kopf.AdmissionError(rejection("CdiIntegration", kwargs.get("name"), problems), code=UNPROCESSABLE)

    @kopf.on.validate(
        GROUP,
        VERSION,
        WHC_PLURAL,
        id=CREDENTIAL_HANDLER_ID,
        operations=["CREATE", "UPDATE"],
        ignore_failures=ignore,
        registry=registry,
    )
    async def validate_credential(**kwargs: Any) -> None:
        body, old = dict(kwargs["body"]), kwargs.get("old")
        spec_wanted, _ = judge(kwargs.get("operation"), body, None if old is None else dict(old))
        if not spec_wanted:
            return
        problems = review_credential(body)
        if problems:
            raise kopf.AdmissionError(
                rejection("WarehouseCredential", kwargs.get("name"), problems), code=UNPROCESSABLE
            )


def configure(settings: kopf.OperatorSettings, webhook: WebhookSettings) -> None:
    """Sets kopf's admission server (and, in managed-local mode, the managed configuration's name)."""
    if webhook.mode == "off":
        return
    cert_dir = webhook.cert_dir
    if cert_dir is None:  # managed-local without a certificate: a self-signed one, in a private directory
        cert_dir = tempfile.mkdtemp(prefix="cdi-webhook-")
        cert, key = self_signed_certificate(_sans(webhook))
        write_certificate(Path(cert_dir), cert, key)
    settings.admission.server = kopf.WebhookServer(
        addr=webhook.addr,
        port=webhook.port,
        host=webhook.host,
        certfile=os.path.join(cert_dir, WEBHOOK_CERT_FILE),
        pkeyfile=os.path.join(cert_dir, WEBHOOK_KEY_FILE),
    )
    settings.admission.managed = CONFIGURATION_NAME if webhook.mode == "managed-local" else None
    log.info(
        "admission webhook: %s on %s:%s (failurePolicy %s)",
        webhook.mode,
        webhook.addr,
        webhook.port,
        webhook.failure_policy,
    )


def _sans(webhook: WebhookSettings) -> list[str]:
    names = [webhook.host, webhook.addr, "localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n and n not in ("0.0.0.0", "::")))


def self_signed_certificate(names: list[str], days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) for `names` (IPs or DNS names), usable as its own CA bundle, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "cdi-operator-webhook")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_certificate(directory: Path, cert: bytes, key: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / WEBHOOK_CERT_FILE).write_bytes(cert)
    key_path = directory / WEBHOOK_KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)
