"""The admission webhook's plain checks (controller/admission.py) and its settings; served for real in
tests/e2e/test_admission_webhook.py."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import kopf
import pytest

from cdi_operator.controller import admission
from cdi_operator.controller.admission import judge, missing_credential_warning, review_credential, review_integration
from cdi_operator.controller.settings import OperatorSettings, SettingsError, WebhookSettings

SPEC: dict[str, Any] = {
    "credentialRef": {"name": "wh"},
    "source": {"database": "db", "schema": "s", "table": "users"},
    "dataType": "customAttributes",
    "schedule": "0 3 * * *",
    "timeZone": "Europe/Paris",
}
REDSHIFT: dict[str, Any] = {
    "metadata": {"name": "wh", "namespace": "ns"},
    "spec": {
        "type": "redshift",
        "redshift": {
            "host": "db.example.com",
            "database": "db",
            "user": "cdi",
            "passwordSecretRef": {"name": "wh-password", "key": "password"},
        },
    },
}
BIGQUERY: dict[str, Any] = {
    "metadata": {"name": "wh", "namespace": "ns"},
    "spec": {
        "type": "bigquery",
        "bigquery": {"project": "p", "serviceAccountKeySecretRef": {"name": "sa", "key": "key.json"}},
    },
}


def integration(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "users", "namespace": "ns"}, "spec": {**SPEC, **spec}}


def credentials(*objs: dict[str, Any]) -> admission.CredentialLookup:
    by_name = {o["metadata"]["name"]: o for o in objs}
    return by_name.get


def test_valid_integration_passes() -> None:
    assert review_integration(integration(), "ns", credentials(REDSHIFT)) == []
    assert review_integration(integration(schedule="*/15 * * * *"), "ns", credentials(REDSHIFT)) == []
    assert review_integration(integration(schedule="0 0 1 * *"), "ns", credentials(REDSHIFT)) == []


def test_bad_cron_names_spec_schedule() -> None:
    [problem] = review_integration(integration(schedule="every day"), "ns", credentials(REDSHIFT))
    assert problem.startswith("spec.schedule: ") and "write five: minute hour" in problem
    [problem] = review_integration(integration(schedule="61 * * * *"), "ns", credentials(REDSHIFT))
    assert problem.startswith("spec.schedule: ") and "'61 * * * *'" in problem


def test_five_minute_schedule_names_the_15_minute_minimum_and_the_fix() -> None:
    [problem] = review_integration(integration(schedule="*/5 * * * *"), "ns", credentials(REDSHIFT))
    assert problem.startswith("spec.schedule: ")
    assert "5 minutes apart" in problem and "at least 15 minutes" in problem and "'*/15 * * * *'" in problem


def test_schedule_more_than_a_month_apart() -> None:
    [problem] = review_integration(integration(schedule="0 0 1 1 *"), "ns", credentials(REDSHIFT))
    assert problem.startswith("spec.schedule: ") and "at most a month apart" in problem


def test_bad_time_zone_names_spec_time_zone() -> None:
    [problem] = review_integration(integration(timeZone="Mars/Olympus"), "ns", credentials(REDSHIFT))
    assert problem.startswith("spec.timeZone: ") and "IANA time zone" in problem and "use e.g. 'UTC'" in problem


def test_every_spec_problem_is_reported() -> None:
    problems = review_integration(integration(schedule="* * * * *", timeZone="Nowhere"), "ns", credentials(REDSHIFT))
    assert [p.split(":")[0] for p in problems] == ["spec.schedule", "spec.timeZone"]


def test_unknown_credential_is_no_refusal_but_a_warning_naming_it_and_the_fix() -> None:
    """GitOps tools apply a directory in any order: the credential may come after the integration."""
    assert review_integration(integration(credentialRef={"name": "missing"}), "ns", credentials(REDSHIFT)) == []
    warning = missing_credential_warning("missing", "ns")
    assert warning.startswith("spec.credentialRef.name: ")
    assert "'missing' does not exist in namespace ns" in warning and "CredentialNotFound" in warning


def test_source_must_fit_the_credentials_warehouse() -> None:
    problems = review_integration(integration(), "ns", credentials(BIGQUERY))
    assert "spec.source.database is not used by bigquery; name the table with dataset/project/table" in problems[0]
    assert any(p.startswith("spec.source.dataset is required for bigquery") for p in problems)
    assert all("WarehouseCredential 'wh' is bigquery" in p for p in problems)
    fitting = integration(source={"project": "p", "dataset": "d", "table": "users"})
    assert review_integration(fitting, "ns", credentials(BIGQUERY)) == []
    no_schema = integration(source={"database": "db", "table": "users"})
    assert review_integration(no_schema, "ns", credentials(REDSHIFT)) == [
        "spec.source.schema is required for redshift (WarehouseCredential 'wh' is redshift)"
    ]


def test_references_skipped_without_lookup_or_with_an_invalid_spec() -> None:
    assert review_integration(integration(credentialRef={"name": "missing"}), "ns", None) == []
    called: list[str] = []

    def lookup(name: str) -> dict[str, Any] | None:
        called.append(name)
        return None

    assert review_integration(integration(schedule="* * * * *"), "ns", lookup)[0].startswith("spec.schedule")
    assert called == []


def test_credential_of_unknown_type_leaves_the_source_alone() -> None:
    broken = {"metadata": {"name": "wh"}, "spec": {"type": "oracle"}}
    assert review_integration(integration(), "ns", credentials(broken)) == []


def test_review_credential() -> None:
    assert review_credential(REDSHIFT) == []
    both = {"spec": {**REDSHIFT["spec"], "bigquery": BIGQUERY["spec"]["bigquery"]}}
    [problem] = review_credential(both)
    assert problem.startswith("spec: ") and "keep only spec.redshift" in problem
    [problem] = review_credential({"spec": {"type": "redshift"}})
    assert "add the spec.redshift block" in problem
    assert review_credential({"spec": {"type": "oracle"}})[0].startswith("spec.type: ")


def test_judge_only_spec_changes_on_update() -> None:
    obj = integration()
    assert judge("CREATE", obj, None) == (True, True)
    # Metadata-only updates (the operator's own patches, finalizers) and deletions are never judged.
    relabelled = {**obj, "metadata": {**obj["metadata"], "labels": {"a": "b"}}}
    assert judge("UPDATE", relabelled, obj) == (False, False)
    deleting = {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert judge("UPDATE", deleting, obj) == (False, False)
    assert judge("UPDATE", integration(schedule="0 4 * * *"), obj) == (True, False)
    assert judge("UPDATE", integration(credentialRef={"name": "other"}), obj) == (True, True)
    assert judge("UPDATE", integration(source={"database": "x", "schema": "s", "table": "t"}), obj) == (True, True)


def test_rejection_message() -> None:
    message = admission.rejection("CdiIntegration", "users", ["spec.a: x", "spec.b: y"])
    assert message == "CdiIntegration users is invalid: spec.a: x; spec.b: y"


# --- settings and serving ----------------------------------------------------------------------------------------


def test_webhook_settings_from_env(tmp_path: Path) -> None:
    assert OperatorSettings.from_env({"CDI_RUNNER_IMAGE": "i"}).webhook == WebhookSettings()
    assert WebhookSettings().mode == "off" and WebhookSettings().failure_policy == "Ignore"
    local = WebhookSettings.from_env({"CDI_WEBHOOK_MODE": "managed-local", "CDI_WEBHOOK_PORT": "8443"})
    assert (local.mode, local.addr, local.port, local.host, local.cert_dir) == (
        "managed-local",
        "127.0.0.1",
        8443,
        None,
        None,
    )
    with pytest.raises(SettingsError, match="CDI_WEBHOOK_MODE"):
        WebhookSettings.from_env({"CDI_WEBHOOK_MODE": "on"})
    with pytest.raises(SettingsError, match="CDI_WEBHOOK_PORT"):
        WebhookSettings.from_env({"CDI_WEBHOOK_PORT": "70000"})
    with pytest.raises(SettingsError, match="CDI_WEBHOOK_FAILURE_POLICY"):
        WebhookSettings.from_env({"CDI_WEBHOOK_FAILURE_POLICY": "ignore"})
    with pytest.raises(SettingsError, match="CDI_WEBHOOK_CERT_DIR is not set"):
        WebhookSettings.from_env({"CDI_WEBHOOK_MODE": "chart"})
    with pytest.raises(SettingsError, match=r"has no tls\.crt"):
        WebhookSettings.from_env({"CDI_WEBHOOK_MODE": "chart", "CDI_WEBHOOK_CERT_DIR": str(tmp_path)})
    cert, key = admission.self_signed_certificate(["cdi-operator-webhook.cdi.svc"])
    admission.write_certificate(tmp_path, cert, key)
    chart = WebhookSettings.from_env(
        {"CDI_WEBHOOK_MODE": "chart", "CDI_WEBHOOK_CERT_DIR": str(tmp_path), "CDI_WEBHOOK_FAILURE_POLICY": "Fail"}
    )
    assert (chart.addr, chart.port, chart.cert_dir, chart.failure_policy) == ("0.0.0.0", 9443, str(tmp_path), "Fail")


def test_self_signed_certificate_loads(tmp_path: Path) -> None:
    cert, key = admission.self_signed_certificate(["127.0.0.1", "localhost"])
    admission.write_certificate(tmp_path, cert, key)
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cadata=cert.decode())  # the certificate is its own CA bundle
    assert client.get_ca_certs()[0]["subjectAltName"] == (("IP Address", "127.0.0.1"), ("DNS", "localhost"))


def _webhook_handlers(mode: str, policy: str = "Ignore") -> tuple[list[Any], kopf.OperatorSettings]:
    registry = kopf.OperatorRegistry()
    settings = OperatorSettings(runner_image="i", webhook=WebhookSettings(mode=mode, failure_policy=policy))
    admission.register(registry, None, settings)  # type: ignore[arg-type]  # kube is used only per request
    kopf_settings = kopf.OperatorSettings()
    for handler in registry._activities.get_all_handlers():
        startup: Any = handler.fn
        startup(settings=kopf_settings)
    return list(registry._webhooks.get_all_handlers()), kopf_settings


def test_register_off_adds_nothing() -> None:
    handlers, kopf_settings = _webhook_handlers("off")
    assert handlers == [] and kopf_settings.admission.server is None


def test_register_managed_local() -> None:
    handlers, kopf_settings = _webhook_handlers("managed-local")
    assert sorted(h.id for h in handlers) == ["validate-credential", "validate-integration"]
    assert all(h.ignore_failures and sorted(h.operations or []) == ["CREATE", "UPDATE"] for h in handlers)
    assert kopf_settings.admission.managed == "cdi.ingest.dev"
    server = kopf_settings.admission.server
    assert isinstance(server, kopf.WebhookServer) and (server.addr, server.port) == ("127.0.0.1", 9443)
    assert server.certfile is not None and Path(server.certfile).exists()
    failing, _ = _webhook_handlers("managed-local", "Fail")
    assert not any(h.ignore_failures for h in failing)
