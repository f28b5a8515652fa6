"""The manifests in examples/ are what users copy: each must load and validate as `cdi sync -f` reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdi_operator.manifests import load_manifests
from cdi_operator.runner.sync import SyncJob

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert EXAMPLES


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
