"""The Argo CD health check of examples/gitops/argocd-cm-health.yaml, run in Lua 5.1 (Argo CD's gopher-lua
dialect) against statuses made by the operator's own conditions module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from cdi_operator.controller import conditions

HEALTH = Path(__file__).resolve().parents[2] / "examples" / "gitops" / "argocd-cm-health.yaml"
KEYS = (
    "resource.customizations.health.cdi.ingest.dev_CdiIntegration",
    "resource.customizations.health.cdi.ingest.dev_WarehouseCredential",
)


def health(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    return dict(lua.execute(script))


def integration(phase: str | None, wanted: list[conditions.Want] | None, observed: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "users", "generation": 3}, "spec": {}}
    if wanted is not None:
        obj["status"] = {
            "phase": phase,
            "observedGeneration": observed,
            "conditions": conditions.apply([], wanted, observed),
        }
    return obj


CASES = {
    "new, no status yet": (integration(None, None), "Progressing"),
    "connection test running": (
        integration("Draft", conditions.testing("testing the connection", keep_ready=False)),
        "Progressing",
    ),
    "test failed: table missing": (
        integration("Draft", conditions.stalled("TableMissing", "no table s.t; create it", connection="False")),
        "Degraded",
    ),
    "credential not applied yet": (
        integration("Draft", conditions.stalled("CredentialNotFound", "no WarehouseCredential 'wh'")),
        "Progressing",
    ),
    "secret not made yet": (
        integration("Draft", conditions.stalled("SecretMissing", "no Secret redshift-cdi", connection="False")),
        "Progressing",
    ),
    "active": (integration("Active", conditions.ready("Active", "syncing on '0 * * * *' (UTC)")), "Healthy"),
    "suspended": (integration("Suspended", conditions.ready("Suspended", "paused (spec.suspend)")), "Suspended"),
    "spec changed, not yet seen": (
        integration("Active", conditions.ready("Active", "syncing"), observed=2),
        "Progressing",
    ),
}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("obj", "expected"), CASES.values(), ids=CASES.keys())
def test_argo_cd_reads_the_operators_status(key: str, obj: dict[str, Any], expected: str) -> None:
    script = yaml.safe_load(HEALTH.read_text())["data"][key]
    result = health(script, obj)
    assert result["status"] == expected
    if expected == "Degraded":
        assert "create it" in result["message"]  # the fix reaches the Argo CD UI
