"""The Helm chart as the tests see it: `helm template` / `helm lint` with the helm built by hack/controlplane."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .controlplane import REPO_ROOT, find_binaries

CHART = REPO_ROOT / "charts" / "cdi-operator"
RELEASE = "cdi-operator"
# Values that switch every option of the chart on (the render, lint and server-side dry-run tests use them).
EVERY_OPTION: dict[str, Any] = {
    "image": {"digest": "sha256:" + "a" * 64},
    "runner": {"image": {"repository": "registry.example.com/cdi-runner", "tag": "1.2.3"}},
    "operator": {
        "watchNamespaces": ["team-a", "team-b"],
        "connectionTestsAtOnce": 40,
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
    },
    "braze": {"restEndpoint": "https://rest.iad-01.braze.com", "apiKeySecret": {"name": "braze", "key": "api-key"}},
    "smtp": {"host": "smtp.example.com", "existingSecret": "smtp-login"},
    "webhook": {"failurePolicy": "Fail", "certManager": {"enabled": True}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "managementApi": {
        "enabled": True,
        "ingress": {"enabled": True, "className": "nginx", "host": "cdi-api.example.com"},
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "airflow"}}}],
    },
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    },
}


def helm_binary() -> Path:
    return find_binaries()["helm"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _values_file(values: Mapping[str, Any], directory: str) -> str:
    path = Path(directory, "values.json")
    path.write_text(json.dumps(values), encoding="utf-8")
    return str(path)


def render(
    values: Mapping[str, Any] | None = None, *, namespace: str = "cdi-system", include_crds: bool = True
) -> list[dict[str, Any]]:
    """The chart's manifests for `values` (merged over values.yaml), one dict per document."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["template", RELEASE, str(CHART), "--namespace", namespace, "-f", _values_file(values or {}, tmp)]
        if include_crds:
            args.append("--include-crds")
        out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return helm("lint", "--strict", str(CHART), "-f", _values_file(values or {}, tmp), check=False)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in matches]}"
    return matches[0]
