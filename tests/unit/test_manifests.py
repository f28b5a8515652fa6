"""`cdi sync -f`: the multi-document YAML a user would `kubectl apply`, and the errors they get for it."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from cdi_operator.api.models import SecretKeyRef, WarehouseType
from cdi_operator.commands.common import braze_settings
from cdi_operator.commands.manifests import ManifestError, Manifests, load_manifests

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: redshift
  namespace: {namespace}
stringData:
  password: s3cr3t-Passw0rd
  other: also-very-secret
"""

CREDENTIAL = """\
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata:
  name: warehouse
  namespace: {namespace}
spec:
  type: redshift
  redshift:
    host: cluster.example.com
    database: dev
    user: cdi
    passwordSecretRef: {{name: redshift, key: password}}
"""

INTEGRATION = """\
apiVersion: cdi.ingest.dev/v1alpha1
kind: CdiIntegration
metadata:
  name: {name}
  namespace: {namespace}
spec:
  credentialRef: {{name: warehouse}}
  source: {{database: dev, schema: public, table: users_changed}}
  dataType: customAttributes
  schedule: "{schedule}"
"""


def integration(name: str = "users", namespace: str = "default", schedule: str = "*/15 * * * *") -> str:
    return INTEGRATION.format(name=name, namespace=namespace, schedule=schedule)


def write(tmp_path: Path, *documents: str, name: str = "cdi.yaml") -> Path:
    path = tmp_path / name
    path.write_text("---\n".join(documents), encoding="utf-8")
    return path


def full(namespace: str = "default") -> list[str]:
    return [
        SECRET.format(namespace=namespace),
        CREDENTIAL.format(namespace=namespace),
        integration(namespace=namespace),
    ]


def test_loads_secret_credential_and_integration(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, *full())])
    assert manifests.secrets[("default", "redshift")] == {"password": "s3cr3t-Passw0rd", "other": "also-very-secret"}
    credential = manifests.credentials[("default", "warehouse")]
    assert credential.spec.type is WarehouseType.REDSHIFT
    chosen = manifests.integration(None)
    assert chosen.metadata.name == "users"
    assert manifests.credential_for(chosen) is credential
    refs = credential.spec.secret_refs()
    assert manifests.resolve_secrets("default", refs, "WarehouseCredential default/warehouse") == {
        ("redshift", "password"): "s3cr3t-Passw0rd"
    }


def test_namespace_defaults_to_default(tmp_path: Path) -> None:
    docs = [d.replace("  namespace: default\n", "") for d in full()]
    manifests = load_manifests([write(tmp_path, *docs)])
    assert ("default", "redshift") in manifests.secrets
    assert manifests.credential_for(manifests.integration("default/users")).metadata.name == "warehouse"


def test_several_files_combine(tmp_path: Path) -> None:
    secret, credential, spec = full()
    paths = [write(tmp_path, secret, credential, name="a.yaml"), write(tmp_path, spec, name="b.yaml")]
    manifests = load_manifests(paths)
    assert manifests.credential_for(manifests.integration("users")).metadata.name == "warehouse"


def test_base64_data_decoded(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"p\xc3\xa4ss").decode()
    secret = f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata:\n  password: {encoded}\n"
    assert load_manifests([write(tmp_path, secret)]).secrets[("default", "s")] == {"password": "päss"}


def test_base64_data_wrapped_over_lines_decoded_like_kubernetes(tmp_path: Path) -> None:
    # `base64 key.pem` wraps at 76 columns; the apiserver ignores the line breaks, so must we.
    value = "-----BEGIN PRIVATE KEY-----\n" + "A" * 200 + "\n-----END PRIVATE KEY-----\n"
    wrapped = textwrap.indent("\n".join(textwrap.wrap(base64.b64encode(value.encode()).decode(), 76)), "    ")
    secret = f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata:\n  key.pem: |\n{wrapped}\n"
    assert load_manifests([write(tmp_path, secret)]).secrets[("default", "s")] == {"key.pem": value}


def test_string_data_wins_over_data_like_kubernetes(tmp_path: Path) -> None:
    secret = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
        f"data:\n  k: {base64.b64encode(b'old').decode()}\nstringData:\n  k: new\n"
    )
    assert load_manifests([write(tmp_path, secret)]).secrets[("default", "s")] == {"k": "new"}


@pytest.mark.parametrize("value", ["not base64!", "abc", base64.b64encode(b"\xff\xfe").decode()])
def test_bad_base64_names_the_key_and_document(tmp_path: Path, value: str) -> None:
    secret = f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: ns}}\ndata:\n  api-key: '{value}'\n"
    path = write(tmp_path, secret)
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    message = str(info.value)
    assert "data.api-key" in message
    assert f"{path} document 1" in message
    assert "Secret ns/s" in message
    assert "stringData" in message  # the fix


def test_unknown_kinds_and_empty_documents_ignored(tmp_path: Path) -> None:
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: marketing}\n"
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n"
    manifests = load_manifests([write(tmp_path, namespace, "", config_map, *full())])
    assert len(manifests.integrations) == 1
    assert list(manifests.secrets) == [("default", "redshift")]


@pytest.mark.parametrize("api_version", ["cdi.ingest.dev/v1", "v1", None])
def test_wrong_api_version_names_the_right_one(tmp_path: Path, api_version: str | None) -> None:
    doc = integration().replace("apiVersion: cdi.ingest.dev/v1alpha1\n", "")
    if api_version:
        doc = f"apiVersion: {api_version}\n{doc}"
    path = write(tmp_path, *full()[:2], doc)
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    message = str(info.value)
    assert "apiVersion must be cdi.ingest.dev/v1alpha1" in message
    assert f"{path} document 3 (CdiIntegration default/users)" in message


def test_validation_error_names_file_document_object_field_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, *full()[:2], integration(schedule="*/5 * * * *"))
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    message = str(info.value)
    assert message.startswith(f"{path} document 3 (CdiIntegration default/users): spec.schedule: ")
    assert "at least 15 minutes apart" in message
    assert "Value error" not in message


def test_validation_error_uses_the_yaml_field_names(tmp_path: Path) -> None:
    doc = integration().replace('schedule: "*/15 * * * *"', 'schedule: "@hourly"\n  timeZone: Mars/Base')
    with pytest.raises(ManifestError, match=r"spec\.timeZone: .*IANA"):
        load_manifests([write(tmp_path, doc)])


def test_every_validation_error_on_its_own_line(tmp_path: Path) -> None:
    doc = integration(schedule="0 0 L * *").replace("dataType: customAttributes", "dataType: attributes")
    with pytest.raises(ManifestError) as info:
        load_manifests([write(tmp_path, doc)])
    lines = str(info.value).splitlines()
    assert any(": spec.dataType: " in line for line in lines)
    assert any(": spec.schedule: " in line for line in lines)


def test_credential_block_error_names_the_block(tmp_path: Path) -> None:
    doc = CREDENTIAL.format(namespace="default").replace("type: redshift", "type: snowflake")
    with pytest.raises(ManifestError) as info:
        load_manifests([write(tmp_path, doc)])
    assert "(WarehouseCredential default/warehouse): spec: " in str(info.value)
    assert "keep only spec.snowflake" in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: [unclosed\n")
    with pytest.raises(ManifestError, match=f"{path} is not valid YAML"):
        load_manifests([path])


def test_non_object_document_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, *full(), "- just\n- a list\n")
    with pytest.raises(ManifestError, match=f"{path} document 4: expected a Kubernetes object"):
        load_manifests([path])


def test_missing_file_reported(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"cannot read .*nope\.yaml"):
        load_manifests([tmp_path / "nope.yaml"])


# --- choosing the integration --------------------------------------------------------------------------------------


def several(tmp_path: Path) -> Manifests:
    docs = [*full(), integration("orders"), *full("marketing")[1:]]  # default/users, default/orders, marketing/users
    return load_manifests([write(tmp_path, *docs)])


def test_select_by_name_when_unique(tmp_path: Path) -> None:
    assert several(tmp_path).integration("orders").metadata.name == "orders"


def test_select_by_namespace_and_name(tmp_path: Path) -> None:
    manifests = several(tmp_path)
    chosen = manifests.integration("marketing/users")
    assert (chosen.metadata.namespace, chosen.metadata.name) == ("marketing", "users")
    assert manifests.integration("default/users").metadata.namespace == "default"


def test_ambiguous_name_asks_for_namespace(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="--integration users is ambiguous; write it as NAMESPACE/NAME") as info:
        several(tmp_path).integration("users")
    assert "marketing/users" in str(info.value)


def test_unknown_name_lists_those_found(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        several(tmp_path).integration("nope")
    message = str(info.value)
    assert "--integration nope is not in the given files" in message
    assert "default/users, default/orders, marketing/users" in message
    with pytest.raises(ManifestError, match="is not in the given files"):
        several(tmp_path).integration("other/orders")


def test_no_name_with_several_asks_to_pick(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="pick one with --integration NAME"):
        several(tmp_path).integration(None)


def test_no_integration_at_all(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, *full()[:2])])
    with pytest.raises(ManifestError, match="no CdiIntegration in the given files"):
        manifests.integration(None)
    with pytest.raises(ManifestError, match=r"integrations found: none"):
        manifests.integration("users")


# --- credentials and secrets ---------------------------------------------------------------------------------------


def test_missing_credential_named(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, SECRET.format(namespace="default"), integration())])
    with pytest.raises(ManifestError) as info:
        manifests.credential_for(manifests.integration(None))
    message = str(info.value)
    assert "CdiIntegration default/users" in message
    assert "spec.credentialRef.name 'warehouse'" in message
    assert "namespace 'default'" in message


def test_credential_in_another_namespace_does_not_count(tmp_path: Path) -> None:
    docs = [CREDENTIAL.format(namespace="other"), integration()]
    manifests = load_manifests([write(tmp_path, *docs)])
    with pytest.raises(ManifestError, match="names no WarehouseCredential"):
        manifests.credential_for(manifests.integration(None))


def test_missing_secret_named_and_how_to_add_it(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, *full()[1:])])
    with pytest.raises(ManifestError) as info:
        manifests.secret_value("default", SecretKeyRef(name="redshift", key="password"), "WarehouseCredential x")
    message = str(info.value)
    assert "WarehouseCredential x refers to Secret default/redshift" in message
    assert "stringData" in message


def test_missing_key_named_without_printing_secret_values(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, *full())])
    with pytest.raises(ManifestError) as info:
        manifests.secret_value("default", SecretKeyRef(name="redshift", key="passwd"), "WarehouseCredential x")
    message = str(info.value)
    assert "key 'passwd' of Secret default/redshift" in message
    assert "keys: other, password" in message
    assert "s3cr3t-Passw0rd" not in message
    assert "also-very-secret" not in message


def test_secret_in_another_namespace_does_not_count(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, SECRET.format(namespace="other"))])
    with pytest.raises(ManifestError, match="Secret default/redshift"):
        manifests.secret_value("default", SecretKeyRef(name="redshift", key="password"), "x")


def test_validation_errors_do_not_echo_secret_values(tmp_path: Path) -> None:
    # A secret document is never validated against a model, and a bad credential document holds only references.
    secret = SECRET.format(namespace="default")
    bad_credential = CREDENTIAL.format(namespace="default").replace("host: cluster.example.com", "host: 'bad host'")
    with pytest.raises(ManifestError) as info:
        load_manifests([write(tmp_path, secret, bad_credential)])
    assert "spec.redshift.host" in str(info.value)
    assert "s3cr3t" not in str(info.value)


WORKSPACE = """\
apiVersion: cdi.ingest.dev/v1alpha1
kind: BrazeWorkspace
metadata:
  name: prod
spec:
  reservePercent: 30
  maxObjectsPerRequest: 50
  limits:
    usersTrack: {requests: 50000, seconds: 60}
"""
BRAZE = """\
  braze:
    workspaceRef: {name: prod}
    restEndpoint: https://rest.iad-01.braze.com
    apiKeySecretRef: {name: redshift, key: other}
"""


def test_an_integration_shares_the_budget_of_the_brazeworkspace_it_names(tmp_path: Path) -> None:
    manifests = load_manifests([write(tmp_path, *full()[:2], integration() + BRAZE, WORKSPACE)])
    settings = braze_settings(manifests.integration(None), manifests, None, required=True)
    assert settings is not None
    budget = settings.budget
    assert (budget.track.requests, budget.track.seconds, budget.reserve) == (50_000, 60.0, 0.3)
    assert (budget.delete.requests, budget.catalog.requests) == (20_000, 16_000)  # the defaults it left alone
    assert settings.max_objects_per_request == 50  # the contract's, lower than the integration's default 75


def test_without_a_brazeworkspace_the_defaults_and_a_missing_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = load_manifests([write(tmp_path, *full()[:2], integration() + BRAZE.replace("prod", "gone"))])
    with pytest.raises(ManifestError, match=r"workspaceRef.name 'gone' names no BrazeWorkspace in namespace 'default'"):
        braze_settings(manifests.integration(None), manifests, None, required=True)
    plain = load_manifests([write(tmp_path, *full())])
    monkeypatch.setenv("CDI_BRAZE_API_KEY", "a-key")
    settings = braze_settings(plain.integration(None), plain, "https://rest.iad-01.braze.com", required=True)
    assert settings is not None and (settings.budget.track.requests, settings.budget.reserve) == (3000, 0.2)
