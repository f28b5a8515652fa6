"""Every example a user copies is accepted by a real kube-apiserver with our CRDs: schema, defaults and CEL rules.

Each file's documents are created with `dryRun=All` in a fresh namespace, as `kubectl apply --dry-run=server`
would: the apiserver runs validation, defaulting and admission without storing anything. What it would store must
read back into the operator's models as the same spec. Kinds of other projects (ExternalSecret) are not installed
here and are left out; tests/unit/test_examples.py checks their references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.controlplane import REPO_ROOT
from kubernetes import client
from kubernetes.client import ApiException
from test_crds_apiserver import install_crds

from cdi_operator.api.models import GROUP, VERSION, CdiIntegration, WarehouseCredential

pytestmark = pytest.mark.e2e

EXAMPLES = REPO_ROOT / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "gitops" / "integrations").glob("*.yaml"))
PLURALS = {"WarehouseCredential": "warehousecredentials", "CdiIntegration": "cdiintegrations"}
MODELS: dict[str, type[WarehouseCredential] | type[CdiIntegration]] = {
    "WarehouseCredential": WarehouseCredential,
    "CdiIntegration": CdiIntegration,
}
NOT_INSTALLED = {"ExternalSecret"}


@pytest.fixture(scope="module")
def crds(kube_api: client.ApiClient) -> list[str]:
    return install_crds(kube_api)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def test_there_are_files() -> None:
    assert FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_apiserver_accepts_every_document(
    path: Path, kube_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    checked = []

    for doc in documents(path):
        kind, name = doc["kind"], doc["metadata"]["name"]
        try:
            if kind == "Secret":
                created = core.create_namespaced_secret(namespace, doc, dry_run="All")
                assert created.metadata.name == name
            elif kind in PLURALS:
                stored = custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURALS[kind], doc, dry_run="All"
                )
                model = MODELS[kind]
                # With the CRD's defaults applied, the object still means what the file says.
                assert model.model_validate(stored).spec == model.model_validate(doc).spec
            else:
                assert kind in NOT_INSTALLED, f"{path.name}: {kind} is neither checked here nor known to be skipped"
                continue
        except ApiException as exc:
            pytest.fail(f"{path.name}: the apiserver refused {kind} {name}: {exc.status} {exc.body}")
        checked.append(kind)

    assert set(checked) >= set(PLURALS), "each file holds a credential and an integration"
    # Nothing was stored.
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS["CdiIntegration"])["items"] == []
