"""The validating admission webhook (controller/admission.py) served by `cdi operator` with
CDI_WEBHOOK_MODE=managed-local against the real apiserver: kopf creates the ValidatingWebhookConfiguration
`cdi.ingest.dev` pointing at https://127.0.0.1:PORT with a self-signed certificate, and the apiserver rejects what
CEL cannot judge (cron spacing, time zones, a source that does not fit the credential) with a message naming the
field. A credential that does not exist yet is only a warning, so apply order does not matter. With the operator
killed (its configuration left behind), failurePolicy Ignore keeps the cluster accepting applies.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from harness.helpers import wait_until
from harness.operator import OperatorProcess
from kubernetes import client
from kubernetes.client import ApiException
from test_crds_apiserver import install_crds

pytestmark = pytest.mark.e2e

GROUP, VERSION, CDI, WHC = "cdi.ingest.dev", "v1alpha1", "cdiintegrations", "warehousecredentials"
CONFIGURATION = "cdi.ingest.dev"
WAIT = 60


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_configuration(api: client.ApiClient) -> None:
    """Deletes kopf's managed configurations (it creates an empty MutatingWebhookConfiguration of the name too)."""
    admission = client.AdmissionregistrationV1Api(api)
    for delete in (
        admission.delete_validating_webhook_configuration,
        admission.delete_mutating_webhook_configuration,
    ):
        with contextlib.suppress(ApiException):
            delete(CONFIGURATION)


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def credential_body(name: str = "wh") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WarehouseCredential",
        "metadata": {"name": name},
        "spec": {
            "type": "redshift",
            "redshift": {
                "host": "127.0.0.1",
                "port": 1,
                "database": "db",
                "user": "cdi",
                "passwordSecretRef": {"name": f"{name}-password", "key": "password"},
            },
        },
    }


def integration_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CdiIntegration",
        "metadata": {"name": name},
        "spec": {
            "credentialRef": {"name": "wh"},
            "source": {"database": "db", "schema": "s", "table": "users"},
            "dataType": "customAttributes",
            "schedule": "0 3 * * *",
            "timeZone": "Europe/Paris",
            **spec,
        },
    }


def create(api: client.ApiClient, namespace: str, plural: str, body: dict[str, Any], dry_run: bool = False) -> None:
    kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
    custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body, **kwargs)


def rejection(api: client.ApiClient, namespace: str, plural: str, body: dict[str, Any]) -> tuple[int, str]:
    with pytest.raises(ApiException) as info:
        create(api, namespace, plural, body)
    return int(info.value.status), str(info.value.body)


@pytest.fixture(scope="module")
def webhook_operator(
    kube_api: client.ApiClient, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crds(kube_api)
    delete_configuration(kube_api)  # a leftover of an earlier, killed run
    env = {
        "CDI_RESYNC_SECONDS": "30",
        "CDI_RETEST_FAILED_SECONDS": "3600",
        "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "10",
        "CDI_WEBHOOK_MODE": "managed-local",
        "CDI_WEBHOOK_ADDR": "127.0.0.1",
        "CDI_WEBHOOK_PORT": str(free_port()),
    }
    proc = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("webhook-operator") / "operator.log", env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        # kopf leaves its managed configuration behind (emptied on a graceful stop, intact after a crash).
        delete_configuration(kube_api)


@pytest.fixture
def webhook(webhook_operator: OperatorProcess, kube_api: client.ApiClient, namespace: str) -> OperatorProcess:
    """The operator, once the configuration exists and the webhook answers (a dry-run create is rejected)."""
    admission = client.AdmissionregistrationV1Api(kube_api)

    def configured() -> bool:
        try:
            config = admission.read_validating_webhook_configuration(CONFIGURATION)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return len(config.webhooks or []) == 2

    def answers() -> bool:
        try:
            create(kube_api, namespace, CDI, integration_body("probe", schedule="* * * * *"), dry_run=True)
        except ApiException as exc:
            return exc.status == 422 and "spec.schedule" in str(exc.body)
        return False

    assert webhook_operator.proc is not None and webhook_operator.proc.poll() is None, webhook_operator.log_tail()
    wait_until(configured, WAIT, f"ValidatingWebhookConfiguration {CONFIGURATION}", details=webhook_operator.log_tail)
    wait_until(answers, WAIT, "the webhook to reject a dry-run create", details=webhook_operator.log_tail)
    return webhook_operator


def test_managed_configuration(webhook: OperatorProcess, kube_api: client.ApiClient) -> None:
    config: Any = client.AdmissionregistrationV1Api(kube_api).read_validating_webhook_configuration(CONFIGURATION)
    by_name = {w.name: w for w in config.webhooks}
    assert sorted(by_name) == ["validate-credential.cdi.ingest.dev", "validate-integration.cdi.ingest.dev"]
    for hook in by_name.values():
        assert hook.failure_policy == "Ignore"
        assert hook.client_config.url.startswith("https://127.0.0.1:")
        assert hook.client_config.ca_bundle
        assert sorted(hook.rules[0].operations) == ["CREATE", "UPDATE"]
    assert by_name["validate-integration.cdi.ingest.dev"].rules[0].resources == [CDI]


def test_rejects_what_cel_cannot_judge(webhook: OperatorProcess, kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, WHC, credential_body())

    status, body = rejection(kube_api, namespace, CDI, integration_body("every-5", schedule="*/5 * * * *"))
    assert 400 <= status < 500 and "spec.schedule" in body and "at least 15 minutes" in body, body
    assert "validate-integration.cdi.ingest.dev" in body  # the apiserver names the webhook that denied it

    status, body = rejection(kube_api, namespace, CDI, integration_body("atlantis", timeZone="Europe/Atlantis"))
    assert 400 <= status < 500 and "spec.timeZone" in body and "IANA" in body, body

    bigquery_source = {"project": "p", "dataset": "d", "table": "users"}
    status, body = rejection(kube_api, namespace, CDI, integration_body("misfit", source=bigquery_source))
    assert 400 <= status < 500 and "spec.source.project is not used by redshift" in body, body

    broken = credential_body("broken")
    broken["spec"]["bigquery"] = {"project": "p", "serviceAccountKeySecretRef": {"name": "s", "key": "k"}}
    status, body = rejection(kube_api, namespace, WHC, broken)
    # CEL may already refuse two blocks; either way the apply is refused with the field named.
    assert 400 <= status < 500 and "bigquery" in body, body

    create(kube_api, namespace, CDI, integration_body("valid"))
    got: Any = custom(kube_api).get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "valid")
    assert got["spec"]["schedule"] == "0 3 * * *"

    # An update that breaks the spec is refused too; a metadata-only update is not judged.
    patch = {"spec": {"schedule": "*/10 * * * *"}}
    with pytest.raises(ApiException) as info:
        custom(kube_api).patch_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "valid", patch)
    assert info.value.status == 422 and "spec.schedule" in str(info.value.body)
    labels = {"metadata": {"labels": {"team": "growth"}}}
    custom(kube_api).patch_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "valid", labels)


def test_an_integration_before_its_credential_is_accepted_with_a_warning_and_converges(
    webhook: OperatorProcess, kube_api: client.ApiClient, namespace: str
) -> None:
    """Flux and Argo CD apply a directory at once, in any order: the credential may come second."""
    objects = custom(kube_api)
    for dry_run in ({"dry_run": "All"}, {}):
        _, status, headers = objects.create_namespaced_custom_object_with_http_info(
            GROUP, VERSION, namespace, CDI, integration_body("early", credentialRef={"name": "later"}), **dry_run
        )
        assert status == 201
        assert "'later' does not exist" in headers.get("Warning", ""), headers

    def reason() -> str:
        obj: Any = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "early")
        conditions = (obj.get("status") or {}).get("conditions") or []
        return next((str(c.get("reason")) for c in conditions if c.get("type") == "Ready"), "")

    wait_until(
        lambda: reason() == "CredentialNotFound", WAIT, "Ready reason CredentialNotFound", details=webhook.log_tail
    )
    create(kube_api, namespace, WHC, credential_body("later"))
    # The credential's creation reconciles the integrations naming it (not only the next resync).
    wait_until(lambda: reason() not in ("", "CredentialNotFound"), WAIT, "the integration to see its credential")


def test_operator_down_does_not_block_applies(
    webhook: OperatorProcess, kube_api: client.ApiClient, namespace: str
) -> None:
    webhook.kill()  # a crash: the configuration stays, pointing at a port nobody listens on
    config = client.AdmissionregistrationV1Api(kube_api).read_validating_webhook_configuration(CONFIGURATION)
    assert len(config.webhooks or []) == 2
    create(kube_api, namespace, WHC, credential_body())
    # Unjudged now (failurePolicy Ignore); the reconcile reports it in the status once the operator is back.
    create(kube_api, namespace, CDI, integration_body("every-5", schedule="*/5 * * * *"))
    got: Any = custom(kube_api).get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "every-5")
    assert got["spec"]["schedule"] == "*/5 * * * *"
