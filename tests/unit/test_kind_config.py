"""kind-config.yaml: the local cluster of the README's quick start and of the e2e tests on kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def load() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "kind-config.yaml").read_text(encoding="utf-8"))
    return config


def test_kind_config_is_a_one_node_cluster_named_cdi() -> None:
    config = load()

    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    # `kind load docker-image … --name cdi` and `kind get kubeconfig --name cdi` rely on the name.
    assert config["name"] == "cdi"
    assert config["nodes"] == [{"role": "control-plane"}]


def test_kind_config_needs_nothing_beyond_docker() -> None:
    """No host mounts, port mappings, feature gates or patches that could fail on a user's machine."""
    assert set(load()) == {"kind", "apiVersion", "name", "nodes"}


def test_the_readme_commands_use_the_same_cluster_name() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")

    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("kind ")]
    for command in commands:
        if "--name" in command:
            assert command.split("--name", 1)[1].split()[0] == load()["name"], command
