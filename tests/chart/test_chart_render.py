"""charts/cdi-operator rendered by `helm template` / checked by `helm lint --strict`, for the default values and
for every option switched on: what a platform team relies on before installing it."""

from __future__ import annotations

import base64
import filecmp
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from harness.helm import CHART, EVERY_OPTION, find, lint, render

from cdi_operator.api.models import ResourceList
from cdi_operator.controller import admission
from cdi_operator.controller.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "cdi-system"
OPTION_SETS = {
    "defaults": {},
    "every option": EVERY_OPTION,
    "own runner account": {"runner": {"serviceAccountName": "my-runner"}, "webhook": {"enabled": False}},
    "cert-manager with an issuer": {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
}


@pytest.mark.parametrize("values", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_helm_lint_strict_passes(values: dict[str, Any]) -> None:
    result = lint(values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout and "[WARNING]" not in result.stdout


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
        ({"operator": {"resyncSecond": 5}}, "/operator"),  # a typo is refused, not ignored
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
        ({"prometheusRule": {"rowErrorRatio": 5}}, "/prometheusRule/rowErrorRatio"),
        ({"runner": {"resources": {"limits": {"memory": "lots"}}}}, "/runner/resources/limits/memory"),
        ({"runner": {"resources": {"limits": {"gpu": "1"}}}}, "/runner/resources/limits"),
        ({"managementApi": {"enable": True}}, "/managementApi"),
        ({"operator": {"connectionTestsAtOnce": 0}}, "/operator/connectionTestsAtOnce"),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_key(values: dict[str, Any], names: str) -> None:
    result = lint(values)
    assert result.returncode != 0
    assert names in result.stdout


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == generated
    _, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds", generated, shallow=False)
    assert mismatch == [] and errors == [], (
        f"charts/cdi-operator/crds/ differs from crds/ ({mismatch or errors}); "
        "run: python -m cdi_operator.api.crds --out crds/ && cp crds/*.yaml charts/cdi-operator/crds/"
    )


def test_runner_resources_take_the_quantities_the_crd_takes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    model = ResourceList.model_json_schema()["properties"]["cpu"]["anyOf"][0]
    assert schema["definitions"]["quantity"]["pattern"] == model["pattern"]


def test_one_operator_at_a_time_under_pod_security_restricted() -> None:
    docs = render()
    deployment = find(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["CDI_LEADER_ELECTION_LEASE"]["value"] == "$(POD_NAMESPACE)/cdi-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True
        assert container["resources"]["limits"]["memory"]
    assert {v["name"] for v in pod["volumes"]} >= {"tmp", "webhook-tls"}  # /tmp writable, the rest read-only


def test_the_operator_accepts_the_settings_the_chart_gives_it(tmp_path: Path) -> None:
    docs = render(EVERY_OPTION)
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}
    env = {k: v.replace("$(POD_NAMESPACE)", NAMESPACE) for k, v in env.items()}
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    env["CDI_WEBHOOK_CERT_DIR"] = env["CDI_MANAGEMENT_API_CERT_DIR"] = str(tmp_path)  # the mounted Secret
    settings = OperatorSettings.from_env(env)
    assert settings.runner_image == "registry.example.com/cdi-runner:1.2.3"
    assert container["image"] == "ghcr.io/cdi-operator/cdi-operator@sha256:" + "a" * 64
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.connection_tests_at_once == 40
    assert settings.braze_default_endpoint == "https://rest.iad-01.braze.com"
    assert settings.braze_default_secret_name == "braze"
    assert settings.webhook.mode == "chart" and settings.webhook.failure_policy == "Fail"
    assert settings.management_api.port == 8443 and settings.management_api.cert_dir == str(tmp_path)
    assert settings.leader_lease == (NAMESPACE, "cdi-operator")
    assert settings.runner_service_account is None  # one least-privilege account per integration
    resources = settings.runner_resources
    assert resources is not None and resources.requests is not None and resources.limits is not None
    assert (resources.requests.cpu, resources.requests.memory, resources.limits.memory) == ("250m", "256Mi", "1Gi")
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert secret_env["CDI_SMTP_PASSWORD"] == {"name": "smtp-login", "key": "password"}  # never a plain value


def test_operator_rbac_is_scoped_and_never_lists_secrets() -> None:
    docs = render()
    role = find(docs, "ClusterRole", "cdi-operator")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "create", "patch"}  # reads the Secrets it is told about, no more
    binding = find(docs, "ClusterRoleBinding", "cdi-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cdi-operator", "namespace": NAMESPACE}]

    scoped = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert not [d for d in scoped if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "cdi-operator"]
    bindings = [d for d in scoped if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "cdi-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    webhook = find(scoped, "ValidatingWebhookConfiguration")
    for hook in webhook["webhooks"]:
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a", "team-b"]


def test_webhook_certificate_matches_its_service_and_ca_bundle() -> None:
    docs = render()
    secret = find(docs, "Secret", "cdi-operator-webhook-tls")
    service = find(docs, "Service", "cdi-operator-webhook")
    webhook = find(docs, "ValidatingWebhookConfiguration")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"cdi-operator-webhook.{NAMESPACE}.svc" in names
    paths = {}
    for hook in webhook["webhooks"]:
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert hook["clientConfig"]["service"]["name"] == service["metadata"]["name"]
        assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
        paths[hook["rules"][0]["resources"][0]] = hook["clientConfig"]["service"]["path"]
    # the paths kopf serves the operator's handlers on
    assert paths == {
        "cdiintegrations": f"/{admission.INTEGRATION_HANDLER_ID}",
        "warehousecredentials": f"/{admission.CREDENTIAL_HANDLER_ID}",
    }


def test_options_render_their_objects() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(EVERY_OPTION)}
    assert {
        ("ServiceMonitor", "cdi-operator"),
        ("PrometheusRule", "cdi-operator"),
        ("NetworkPolicy", "cdi-operator"),
        ("Certificate", "cdi-operator-webhook"),
        ("Issuer", "cdi-operator-selfsigned"),
        ("ConfigMap", "cdi-operator-dashboard"),
    } <= kinds
    defaults = {d["kind"] for d in render()}
    assert not defaults & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "Certificate"}
    monitor = find(render(EVERY_OPTION), "ServiceMonitor")
    metrics_service = find(render(EVERY_OPTION), "Service", "cdi-operator-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == metrics_service["spec"]["ports"][0]["name"]
    # our `namespace` and `endpoint` labels survive the Prometheus Operator's target labels
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_management_api_is_off_by_default_and_renders_its_objects_when_on() -> None:
    defaults = render()
    assert not [d for d in defaults if "management-api" in d["metadata"]["name"]]
    operator_env = {e["name"] for e in find(defaults, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "CDI_MANAGEMENT_API_PORT" not in operator_env

    docs = render({"managementApi": {"enabled": True, "ingress": {"enabled": True, "host": "cdi-api.example.com"}}})
    service = find(docs, "Service", "cdi-operator-management-api")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "management-api", "protocol": "TCP"}
    ]
    ingress = find(docs, "Ingress", "cdi-operator-management-api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"number": 443}}
    # the operator may ask who a caller is and what it may do, nothing more
    cluster_rules = find(docs, "ClusterRole", "cdi-operator-cluster")["rules"]
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in cluster_rules
    assert {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["subjectaccessreviews"],
        "verbs": ["create"],
    } in cluster_rules
    caller = find(docs, "ClusterRole", "cdi-operator-management-api-caller")
    assert caller["rules"] == [
        {"apiGroups": ["cdi.ingest.dev"], "resources": ["cdiintegrations"], "verbs": ["get", "list", "patch"]}
    ]
    # HTTPS with the webhook's certificate, which names the API's Service too
    secret = find(docs, "Secret", "cdi-operator-webhook-tls")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {f"cdi-operator-webhook.{NAMESPACE}.svc", f"cdi-operator-management-api.{NAMESPACE}.svc"} <= set(names)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CDI_MANAGEMENT_API_PORT"] == "8443" and env["CDI_MANAGEMENT_API_CERT_DIR"] == "/etc/cdi/webhook-tls"

    # without the webhook the certificate is still made, for the API alone
    alone = render({"webhook": {"enabled": False}, "managementApi": {"enabled": True}})
    assert not [d for d in alone if d["kind"] == "ValidatingWebhookConfiguration"]
    secret = find(alone, "Secret", "cdi-operator-webhook-tls")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert (
        f"cdi-operator-management-api.{NAMESPACE}.svc" in names and f"cdi-operator-webhook.{NAMESPACE}.svc" not in names
    )
    certificate = find(
        render({"managementApi": {"enabled": True}, "webhook": {"certManager": {"enabled": True}}}),
        "Certificate",
        "cdi-operator-webhook",
    )
    assert f"cdi-operator-management-api.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    plain = render({"managementApi": {"enabled": True, "tls": False}, "webhook": {"enabled": False}})
    assert not [d for d in plain if d["kind"] == "Secret"]
