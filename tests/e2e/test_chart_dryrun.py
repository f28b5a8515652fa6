"""Every manifest the chart renders, for the default values and with every option on, applied with server-side
dry-run to the real apiserver: the API schemas (ours, prometheus-operator's and cert-manager's CRDs, from their Go
modules by hack/third-party-crds.sh), the CEL rules and the admission chain accept them as they are."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness.controlplane import REPO_ROOT
from harness.helm import EVERY_OPTION, render
from harness.helpers import apply_crds
from kubernetes import client, dynamic
from kubernetes.client import ApiException

pytestmark = pytest.mark.e2e

FIELD_MANAGER = "cdi-chart-dry-run"


@pytest.fixture(scope="module")
def third_party_crds(kube_api: client.ApiClient) -> None:
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "third-party-crds.sh")], check=True, capture_output=True, text=True
    ).stdout
    apply_crds(kube_api, sorted(Path(out.strip().splitlines()[-1]).glob("*.yaml")), FIELD_MANAGER)


def dry_run_apply(api: client.ApiClient, docs: list[dict[str, Any]]) -> list[str]:
    """Server-side apply with dryRun=All of each document; the refusals, each naming its object."""
    resources = dynamic.DynamicClient(api).resources
    refused = []
    for doc in docs:
        meta = doc["metadata"]
        try:
            resource = resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            resource.server_side_apply(
                body=doc,
                name=meta["name"],
                namespace=meta.get("namespace") if resource.namespaced else None,
                field_manager=FIELD_MANAGER,
                force=True,
                dry_run="All",
            )
        except (ApiException, dynamic.exceptions.ResourceNotFoundError) as exc:
            body = getattr(exc, "body", None) or str(exc)
            refused.append(f"{doc['kind']} {meta.get('namespace', '')}/{meta['name']}: {body}")
    return refused


@pytest.mark.parametrize("option_set", ["defaults", "every option"])
def test_rendered_chart_passes_server_side_dry_run(
    kube_api: client.ApiClient, third_party_crds: None, option_set: str
) -> None:
    core = client.CoreV1Api(kube_api)
    suffix = secrets.token_hex(3)
    release_namespace = f"cdi-dry-{suffix}"
    values: dict[str, Any] = {}
    namespaces = [release_namespace]
    if option_set == "every option":
        watched = [f"team-a-{suffix}", f"team-b-{suffix}"]
        values = {**EVERY_OPTION, "operator": {**EVERY_OPTION["operator"], "watchNamespaces": watched}}
        values["grafanaDashboard"] = {**EVERY_OPTION["grafanaDashboard"], "namespace": f"monitoring-{suffix}"}
        namespaces += [*watched, f"monitoring-{suffix}"]
    for name in namespaces:
        core.create_namespace({"metadata": {"name": name}})
    try:
        docs = render(values, namespace=release_namespace)
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "ClusterRole", "ValidatingWebhookConfiguration", "CustomResourceDefinition"} <= kinds
        assert dry_run_apply(kube_api, docs) == []
    finally:
        for name in namespaces:
            core.delete_namespace(name)
