"""The chart's Grafana dashboard as plain PromQL: its panels' queries with Grafana's variables filled in as Grafana
would with "All" selected, for running them against a Prometheus that has no Grafana in front of it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .controlplane import REPO_ROOT

DASHBOARD = REPO_ROOT / "charts" / "cdi-operator" / "dashboards" / "cdi-operator.json"

# "All" of a multi-value variable is its allValue, `.*`; the windows are what Grafana picks for a short time range
# over a Prometheus scraping every 15s or faster.
GRAFANA_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "namespace": ".*",
    "integration": ".*",
}

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """`expr` with `$name` and `${name}` replaced; an unknown variable is an error rather than left in the query."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def dashboard_queries(dashboard: Mapping[str, Any], variables: Mapping[str, str] = GRAFANA_VARIABLES) -> list[str]:
    """The PromQL of every panel target, in panel order, ready for Prometheus' /api/v1/query."""
    return [
        substitute(target["expr"], variables)
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
