"""The manifests in examples/ are what users copy: each must load and validate as `cdi sync -f` reads it.

examples/*.yaml are self-contained sets (Secrets with placeholders, a WarehouseCredential, CdiIntegrations) that a
user applies with `kubectl apply -n NAMESPACE -f`; examples/gitops/ installs the operator and a directory of
integrations with Argo CD or Flux, with no secret value in Git.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdi_operator.api.models import (
    API_VERSION,
    CdiIntegration,
    DataType,
    SnowflakeSpec,
    WarehouseCredential,
    WarehouseType,
)
from cdi_operator.commands.manifests import load_manifests
from cdi_operator.runner.sync import SyncJob

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
GITOPS = REPO / "examples" / "gitops"
GITOPS_INTEGRATIONS = sorted((GITOPS / "integrations").glob("*.yaml"))
ALL_YAML = sorted((REPO / "examples").rglob("*.yaml"))
# Every file that holds WarehouseCredentials and CdiIntegrations for users to apply.
RESOURCE_FILES = EXAMPLES + GITOPS_INTEGRATIONS
CHART = "charts/cdi-operator"
PLACEHOLDER = "change-me"
SYNC_WAVE = "argocd.argoproj.io/sync-wave"
OUR_KINDS = ("WarehouseCredential", "CdiIntegration")

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    loaded = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert all(isinstance(doc, dict) for doc in loaded), f"{path.name}: every document is a Kubernetes object"
    return loaded


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def provided_secrets(docs: list[Doc]) -> dict[str, set[str]]:
    """Secret name -> its keys, from Secrets and from the ExternalSecrets that create Secrets."""
    keys: dict[str, set[str]] = {}
    for doc in docs:
        if doc["kind"] == "Secret":
            keys[doc["metadata"]["name"]] = set(doc.get("stringData") or {}) | set(doc.get("data") or {})
        elif doc["kind"] == "ExternalSecret":
            target = doc["spec"].get("target", {}).get("name") or doc["metadata"]["name"]
            keys[target] = {item["secretKey"] for item in doc["spec"]["data"]}
    return keys


def secret_references(docs: list[Doc]) -> list[tuple[str, str, str]]:
    """("Kind/name" of the referring object, Secret name, key) for every secret reference of our resources."""
    refs = []
    for doc in of_kind(docs, "WarehouseCredential"):
        credential = WarehouseCredential.model_validate(doc)
        owner = f"WarehouseCredential/{credential.metadata.name}"
        refs += [(owner, ref.name, ref.key) for ref in credential.spec.secret_refs()]
    for doc in of_kind(docs, "CdiIntegration"):
        integration = CdiIntegration.model_validate(doc)
        braze = integration.spec.braze
        if braze is not None and braze.api_key_secret_ref is not None:
            ref = braze.api_key_secret_ref
            refs.append((f"CdiIntegration/{integration.metadata.name}", ref.name, ref.key))
    return refs


def chart_values() -> Doc:
    values: Doc = yaml.safe_load((REPO / CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def unknown_values(given: Doc, defaults: Doc, prefix: str = "") -> list[str]:
    """Keys of `given` that the chart's values.yaml does not have (a typo there is silently ignored by Helm)."""
    unknown = []
    for key, value in given.items():
        if key not in defaults:
            unknown.append(prefix + key)
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            unknown += unknown_values(value, defaults[key], f"{prefix}{key}.")
    return unknown


def test_there_are_examples() -> None:
    assert EXAMPLES
    assert GITOPS_INTEGRATIONS


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_every_reference_resolves(path: Path) -> None:
    manifests = load_manifests([path])

    assert manifests.integrations, "an example holds at least one CdiIntegration"
    for integration in manifests.integrations:
        credential = manifests.credential_for(integration)
        SyncJob.for_integration(integration, credential)
        where = f"{path.name}: {integration.metadata.name}"
        manifests.resolve_secrets(credential.metadata.namespace, credential.spec.secret_refs(), where)
        braze = integration.spec.braze
        if braze is not None and braze.api_key_secret_ref is not None:
            manifests.secret_value(integration.metadata.namespace, braze.api_key_secret_ref, where)


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_every_example_file_is_kubernetes_yaml(path: Path) -> None:
    docs = documents(path)

    assert docs
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
    names = Counter((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    assert [key for key, count in names.items() if count > 1] == [], "one object would overwrite the other"
    for doc in docs:
        if doc["kind"] in (*OUR_KINDS, "Secret", "ExternalSecret"):
            # The namespace comes from `kubectl apply -n`, the Argo CD destination or the Flux targetNamespace.
            assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']} fixes a namespace"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_every_custom_resource_validates_with_the_models(path: Path) -> None:
    for doc in documents(path):
        if doc["kind"] in OUR_KINDS:
            assert doc["apiVersion"] == API_VERSION
            model = WarehouseCredential if doc["kind"] == "WarehouseCredential" else CdiIntegration
            model.model_validate(doc)


@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: p.name)
def test_every_reference_names_an_object_of_the_same_file(path: Path) -> None:
    docs = documents(path)
    credentials = {
        doc["metadata"]["name"]: WarehouseCredential.model_validate(doc) for doc in of_kind(docs, "WarehouseCredential")
    }
    integrations = [CdiIntegration.model_validate(doc) for doc in of_kind(docs, "CdiIntegration")]

    assert integrations
    for integration in integrations:
        credential = credentials.get(integration.spec.credential_ref.name)
        assert credential is not None, f"{integration.metadata.name}: credentialRef names no credential here"
        assert integration.spec.source.problems_for(credential.spec.type) == []
    secrets = provided_secrets(docs)
    for owner, name, key in secret_references(docs):
        assert name in secrets, f"{owner} refers to Secret {name}, which {path.name} does not provide"
        assert key in secrets[name], f"{owner} refers to key {key} of Secret {name}, which has {secrets[name]}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_secrets_hold_only_obvious_placeholders_and_are_all_used(path: Path) -> None:
    docs = documents(path)
    used = {name for _, name, _ in secret_references(docs)}

    for secret in of_kind(docs, "Secret"):
        name = secret["metadata"]["name"]
        assert "data" not in secret, f"{name}: use stringData, so that the placeholder is visible"
        assert secret["stringData"], name
        assert set(secret["stringData"].values()) == {PLACEHOLDER}, f"{name}: a value that is not {PLACEHOLDER!r}"
        assert name in used, f"Secret {name} is not referred to by anything in {path.name}"


def test_examples_cover_every_warehouse_and_every_data_type() -> None:
    warehouses: set[WarehouseType] = set()
    data_types: set[DataType] = set()
    for path in EXAMPLES:
        docs = documents(path)
        warehouses |= {WarehouseCredential.model_validate(d).spec.type for d in of_kind(docs, "WarehouseCredential")}
        data_types |= {CdiIntegration.model_validate(d).spec.data_type for d in of_kind(docs, "CdiIntegration")}

    assert warehouses >= set(WarehouseType) - {WarehouseType.DUCKDB}
    assert data_types == set(DataType)


def test_snowflake_examples_leave_the_key_pair_to_the_operator() -> None:
    snowflake = [
        credential
        for path in RESOURCE_FILES
        for doc in of_kind(documents(path), "WarehouseCredential")
        if (credential := WarehouseCredential.model_validate(doc)).spec.type is WarehouseType.SNOWFLAKE
    ]

    assert snowflake
    for credential in snowflake:
        assert isinstance(credential.spec.settings, SnowflakeSpec)
        assert credential.spec.settings.private_key_secret_ref is None


def test_examples_can_share_one_namespace() -> None:
    """Applying several examples into one namespace must not make one overwrite another's objects."""
    owners: dict[tuple[str, str], list[str]] = {}
    secret_keys: dict[str, set[frozenset[str]]] = {}
    for path in RESOURCE_FILES:
        docs = documents(path)
        for doc in docs:
            if doc["kind"] in OUR_KINDS:
                owners.setdefault((doc["kind"], doc["metadata"]["name"]), []).append(path.name)
        for name, keys in provided_secrets(docs).items():
            secret_keys.setdefault(name, set()).add(frozenset(keys))

    assert {key: files for key, files in owners.items() if len(files) > 1} == {}
    assert {name: keys for name, keys in secret_keys.items() if len(keys) > 1} == {}


# --- GitOps --------------------------------------------------------------------------------------------------------


def test_gitops_files_commit_no_secret_values() -> None:
    for path in sorted(GITOPS.rglob("*.yaml")):
        for doc in documents(path):
            assert doc["kind"] != "Secret", f"{path.name}: commit an ExternalSecret, SealedSecret or SOPS file instead"


def test_gitops_readme_names_every_gitops_file() -> None:
    readme = (GITOPS / "README.md").read_text(encoding="utf-8")

    for path in sorted(GITOPS.glob("*.yaml")):
        assert path.name in readme


def test_argocd_operator_application_installs_the_chart_with_server_side_apply() -> None:
    app = one(documents(GITOPS / "argocd-operator.yaml"), "Application")
    chart = yaml.safe_load((REPO / CHART / "Chart.yaml").read_text(encoding="utf-8"))
    source, policy = app["spec"]["source"], app["spec"]["syncPolicy"]

    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert source["path"] == CHART
    assert source["repoURL"].removesuffix(".git") in chart["sources"]
    assert source["targetRevision"] not in ("HEAD", "main", "master"), "pin a release, do not follow a branch"
    assert unknown_values(source["helm"]["valuesObject"], chart_values()) == []
    assert isinstance(policy["automated"], dict)
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(policy["syncOptions"])


def test_argocd_integrations_application_syncs_a_directory_after_the_operator() -> None:
    operator = one(documents(GITOPS / "argocd-operator.yaml"), "Application")
    app = one(documents(GITOPS / "argocd-integrations.yaml"), "Application")
    policy = app["spec"]["syncPolicy"]

    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert "directory" in app["spec"]["source"] and app["spec"]["source"]["path"]
    assert isinstance(policy["automated"], dict)
    assert "CreateNamespace=true" in policy["syncOptions"]
    assert int(app["metadata"]["annotations"][SYNC_WAVE]) > int(operator["metadata"]["annotations"][SYNC_WAVE])


@pytest.mark.parametrize("path", GITOPS_INTEGRATIONS, ids=lambda p: p.name)
def test_sync_waves_apply_secrets_then_credentials_then_integrations(path: Path) -> None:
    docs = documents(path)

    def wave(doc: Doc) -> int:
        return int(doc["metadata"].get("annotations", {}).get(SYNC_WAVE, "0"))

    secret_wave = {}
    for doc in docs:
        if doc["kind"] == "ExternalSecret":
            secret_wave[doc["spec"].get("target", {}).get("name") or doc["metadata"]["name"]] = wave(doc)
        elif doc["kind"] == "Secret":
            secret_wave[doc["metadata"]["name"]] = wave(doc)
    waves = {f"{doc['kind']}/{doc['metadata']['name']}": wave(doc) for doc in docs if doc["kind"] in OUR_KINDS}

    for owner, name, _ in secret_references(docs):
        assert secret_wave[name] < waves[owner], f"{owner} is applied before its Secret {name}"
    for doc in of_kind(docs, "CdiIntegration"):
        credential = f"WarehouseCredential/{doc['spec']['credentialRef']['name']}"
        assert waves[credential] < wave(doc), f"{doc['metadata']['name']} is applied before {credential}"


def test_gitops_integrations_without_braze_settings_get_the_chart_defaults_secret() -> None:
    """Integrations without spec.braze use the Secret the chart's values name; the directory must provide it."""
    argo_values = one(documents(GITOPS / "argocd-operator.yaml"), "Application")["spec"]["source"]["helm"]
    flux_values = one(documents(GITOPS / "flux-operator.yaml"), "HelmRelease")["spec"]["values"]

    for path in GITOPS_INTEGRATIONS:
        docs = documents(path)
        if not any("braze" not in doc["spec"] for doc in of_kind(docs, "CdiIntegration")):
            continue
        secrets = provided_secrets(docs)
        for values in (argo_values["valuesObject"], flux_values):
            default = values["braze"]["apiKeySecret"]
            assert default["key"] in secrets.get(default["name"], set()), path.name
            assert values["braze"]["restEndpoint"]


def test_flux_helmrelease_installs_the_chart_from_git_and_keeps_crds_current() -> None:
    docs = documents(GITOPS / "flux-operator.yaml")
    repo, release = one(docs, "GitRepository"), one(docs, "HelmRelease")
    chart = yaml.safe_load((REPO / CHART / "Chart.yaml").read_text(encoding="utf-8"))
    chart_spec = release["spec"]["chart"]["spec"]

    assert repo["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    assert repo["spec"]["url"].removesuffix(".git") in chart["sources"]
    assert set(repo["spec"]["ref"]) & {"tag", "semver", "commit"}, "pin a release, do not follow a branch"
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    assert chart_spec["chart"].removeprefix("./") == CHART
    assert chart_spec["sourceRef"]["kind"] == "GitRepository"
    assert chart_spec["sourceRef"]["name"] == repo["metadata"]["name"]
    assert chart_spec["sourceRef"].get("namespace", release["metadata"]["namespace"]) == repo["metadata"]["namespace"]
    assert release["spec"]["install"]["crds"] == "CreateReplace"
    assert release["spec"]["upgrade"]["crds"] == "CreateReplace"
    assert unknown_values(release["spec"]["values"], chart_values()) == []


def test_flux_integrations_wait_for_the_operator_and_for_ready_resources() -> None:
    release = one(documents(GITOPS / "flux-operator.yaml"), "HelmRelease")
    docs = documents(GITOPS / "flux-integrations.yaml")
    kustomizations = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Kustomization")}
    integrations = [k for k in kustomizations.values() if k["spec"].get("dependsOn")]

    assert all(k["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" for k in kustomizations.values())
    assert len(integrations) == 1
    spec = integrations[0]["spec"]
    assert spec["prune"] is True
    assert spec["wait"] is True
    # Flux lets a Kustomization depend only on Kustomizations: the one it depends on health-checks the HelmRelease.
    (dependency,) = spec["dependsOn"]
    assert dependency["name"] == release["metadata"]["name"]
    operator = kustomizations[dependency["name"]]["spec"]
    checked = {(c["kind"], c["name"], c.get("namespace")) for c in operator["healthChecks"]}
    assert ("HelmRelease", release["metadata"]["name"], release["metadata"]["namespace"]) in checked
    # Flux does not create the target namespace.
    namespaces = {doc["metadata"]["name"] for doc in of_kind(docs, "Namespace")}
    assert spec["targetNamespace"] in namespaces
