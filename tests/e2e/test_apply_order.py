"""Apply order does not matter, as GitOps tools need: a directory holding the Secrets, the credential and two
integrations goes in with one `kubectl apply --server-side` (first `--dry-run=server`, as Flux does), the
integrations' file before the credential's, with the webhook on; both integrations converge to Active by themselves.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.controlplane import BUILD_SCRIPT
from harness.helpers import wait_until
from harness.operator import OperatorProcess
from harness.postgres import sql
from kubernetes import client
from test_admission_webhook import webhook, webhook_operator  # noqa: F401 (fixtures: the operator, its webhook on)
from test_chart_install import example_documents
from test_operator import get

pytestmark = pytest.mark.e2e

WAIT = 120


def kubectl_binary() -> Path:
    """kubectl from `hack/controlplane/build.sh node` (built once with the node's binaries)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "node"], capture_output=True, text=True, check=True)
    return Path(result.stdout.strip().splitlines()[-1]) / "kubectl"


@pytest.fixture
def tables(pg_settings: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    schema = f"order_{uuid.uuid4().hex[:10]}"
    sql(pg_settings, f'CREATE SCHEMA "{schema}"')
    names = ["attributes_a", "attributes_b"]
    for name in names:
        sql(pg_settings, f'CREATE TABLE "{schema}".{name} (updated_at TIMESTAMP, external_id TEXT, payload TEXT)')
    yield schema, names
    sql(pg_settings, f'DROP SCHEMA "{schema}" CASCADE')


def test_a_directory_applied_integrations_first_converges(
    webhook: OperatorProcess,  # noqa: F811 (the fixture imported above)
    kube_api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    pg_settings: dict[str, str],
    tables: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    schema, (first, second) = tables
    docs = example_documents(pg_settings, schema, first, "http://127.0.0.1:9")
    integration: dict[str, Any] = next(d for d in docs if d["kind"] == "CdiIntegration")
    other = yaml.safe_load(yaml.safe_dump(integration))
    other["metadata"]["name"] = "user-attributes-b"
    other["spec"]["source"]["table"] = second
    # kubectl applies a directory's files in name order: the integrations come first.
    (tmp_path / "1-integrations.yaml").write_text(yaml.safe_dump_all([integration, other]))
    (tmp_path / "2-credential.yaml").write_text(yaml.safe_dump_all([d for d in docs if d["kind"] != "CdiIntegration"]))
    kubectl = [str(kubectl_binary()), "--kubeconfig", kubeconfig, "-n", namespace]

    dry = subprocess.run(
        [*kubectl, "apply", "--server-side", "--dry-run=server", "-f", str(tmp_path)],
        text=True,
        capture_output=True,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "does not exist" in dry.stderr, "the webhook's warning reaches kubectl"
    assert get(kube_api, "cdiintegrations", namespace, integration["metadata"]["name"]) is None

    applied = subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(tmp_path)], text=True, capture_output=True, check=False
    )
    assert applied.returncode == 0, applied.stderr

    def active(name: str) -> bool:
        obj = get(kube_api, "cdiintegrations", namespace, name) or {}
        return (obj.get("status") or {}).get("phase") == "Active"

    for name in (integration["metadata"]["name"], other["metadata"]["name"]):
        wait_until(lambda: active(name), WAIT, f"{name} Active", details=webhook.log_tail)  # noqa: B023
