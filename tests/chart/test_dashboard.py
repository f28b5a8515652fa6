"""The Grafana dashboard the chart ships: Grafana can load it, its panels sit on the grid and query the chosen
Prometheus, every query parses and returns data once an operator has counted one sync, it uses only the metrics the
operator exports, and the chart puts it, unchanged, in a ConfigMap Grafana's sidecar picks up."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as grafana
from grafana_foundation_sdk.models import prometheus as grafana_prometheus
from harness.dashboard import DASHBOARD, dashboard_queries, iter_panels, load_dashboard
from harness.helm import render
from prometheus_client import CollectorRegistry
from test_alerts import alerts, prometheus_rule

from cdi_operator.api.models import RunResult, RunSummary
from cdi_operator.controller.metrics import Metrics

# DESIGN.md "Metrics": the names dashboards and alerts may rely on, as Prometheus stores them.
DOCUMENTED_METRICS = frozenset(
    {
        "cdi_sync_runs_total",
        "cdi_sync_rows_total",
        "cdi_sync_duration_seconds_bucket",
        "cdi_sync_duration_seconds_sum",
        "cdi_sync_duration_seconds_count",
        "cdi_sync_watermark_timestamp_seconds",
        "cdi_sync_last_success_timestamp_seconds",
        "cdi_braze_requests_total",
        "cdi_integrations",
        "cdi_connection_tests_total",
    }
)
METRIC_NAME = re.compile(r"\bcdi_[a-z_]+\b")
SELECTOR = re.compile(r"\b(cdi_[a-z_]+)\b(\{[^}]*\})?")
RANGE_OR_OFFSET = re.compile(r"\[([^\]]+)\]|\boffset\s+([$\w]+)")
GRID_COLUMNS = 24
FILTERS = {"namespace": 'namespace=~"$namespace"', "integration": 'integration=~"$integration"'}
SCRAPE_LABELS = {"job": "cdi-operator-metrics", "instance": "10.0.0.5:8080"}
FINISHED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def one_sync_registry() -> CollectorRegistry:
    """What an operator exports after it has counted one finished sync with synced and failed rows."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, counting_since=FINISHED - timedelta(hours=1))
    metrics.set_phases({"Active": 1})
    metrics.observe_connection_test("snowflake", "Passed")
    run = RunSummary.model_validate(
        {
            "trigger": "syncNow",
            "startedAt": FINISHED - timedelta(seconds=42),
            "finishedAt": FINISHED,
            "result": RunResult.PARTIAL,
            "rowsRead": 12,
            "rowsSynced": 10,
            "rowsFailed": 2,
            "watermark": FINISHED - timedelta(minutes=5),
            "brazeRequests": {"/users/track:201": 3},
        }
    )
    assert metrics.observe_run("team-a", "orders", "customAttributes", run)
    return registry


def exported_samples() -> dict[str, set[str]]:
    """Sample name -> label names, as the operator's registry exposes them (so _total, _bucket... are real)."""
    samples: dict[str, set[str]] = {}
    for family in one_sync_registry().collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return exported_samples()


def targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def missing_from(original: Any, decoded: Any, path: str = "$") -> list[str]:
    """Paths of `original` that `decoded` lacks or holds differently (what a decode dropped or changed)."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            return [path]
        return [
            lost
            for key, value in original.items()
            for lost in (missing_from(value, decoded[key], f"{path}.{key}") if key in decoded else [f"{path}.{key}"])
        ]
    if isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            return [path]
        return [
            lost
            for i, (a, b) in enumerate(zip(original, decoded, strict=True))
            for lost in missing_from(a, b, f"{path}[{i}]")
        ]
    return [] if original == decoded else [path]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, check=False)


# --- Grafana's schema ---------------------------------------------------------------------------------------------


def test_grafana_dashboard_model_decodes_every_panel_and_query(dashboard: dict[str, Any]) -> None:
    register_default_plugins()
    decoded = grafana.Dashboard.from_json(dashboard)

    assert (decoded.uid, decoded.title, decoded.schema_version) == ("cdi-operator", "CDI operator", 39)
    assert decoded.panels is not None
    assert [p.title for p in decoded.panels] == [p["title"] for p in dashboard["panels"]]
    for panel, original in zip(decoded.panels, dashboard["panels"], strict=True):
        assert isinstance(panel, grafana.Panel), original["title"]
        assert panel.targets is not None
        queries = [q for q in panel.targets if isinstance(q, grafana_prometheus.Dataquery)]
        assert [(q.ref_id, q.expr) for q in queries] == [(t["refId"], t["expr"]) for t in original["targets"]]
    assert decoded.templating.list_val is not None
    assert [(v.name, grafana.VariableType(v.type_val)) for v in decoded.templating.list_val] == [
        ("datasource", grafana.VariableType.DATASOURCE),
        ("namespace", grafana.VariableType.QUERY),
        ("integration", grafana.VariableType.QUERY),
    ]


def test_every_field_of_the_file_is_one_grafana_knows(dashboard: dict[str, Any]) -> None:
    # A misspelt key (say "gridpos" or "legendFormt") is silently ignored by Grafana; the model drops it on decode.
    register_default_plugins()
    reencoded = json.loads(json.dumps(grafana.Dashboard.from_json(dashboard), cls=JSONEncoder))

    assert missing_from(dashboard, reencoded) == []


# --- what Grafana relies on ---------------------------------------------------------------------------------------


def test_panels_have_unique_ids_and_sit_on_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids

    occupied: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= grid.keys(), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


def test_every_panel_queries_the_chosen_prometheus(dashboard: dict[str, Any]) -> None:
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    for panel in iter_panels(dashboard):
        assert panel["datasource"] == chosen, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", chosen) == chosen, panel["title"]

    datasource = variables(dashboard)["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")


def test_namespace_and_integration_pickers_offer_all_and_several(dashboard: dict[str, Any]) -> None:
    for name in ("namespace", "integration"):
        variable = variables(dashboard)[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert (variable["multi"], variable["includeAll"], variable["allValue"]) == (True, True, ".*")
        assert variable["query"]["query"].startswith("label_values(")
        assert variable["query"]["query"].endswith(f", {name})")
    assert 'namespace=~"$namespace"' in variables(dashboard)["integration"]["query"]["query"]


def test_every_panel_says_what_it_shows(dashboard: dict[str, Any]) -> None:
    for panel in iter_panels(dashboard):
        assert panel["title"].strip()
        assert len(panel.get("description", "")) > 40, panel["title"]


def test_queries_follow_the_pickers_and_the_time_range(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    for panel, target in targets(dashboard):
        expr = target["expr"]
        for name, matchers in SELECTOR.findall(expr):
            for label, matcher in FILTERS.items():
                if label in exported.get(name, set()):
                    assert matcher in matchers, f"{panel['title']}: {name} is not filtered by ${label}"
        for window, offset in RANGE_OR_OFFSET.findall(expr):
            # Grafana sizes these to the scrape interval and the time picker; a fixed window would not follow them.
            assert (window or offset) in ("$__rate_interval", "$__range"), f"{panel['title']}: {expr}"
        if "$__range" in expr:
            assert target["instant"], f"{panel['title']}: a count over the time range is one value, not a series"


# --- the metrics --------------------------------------------------------------------------------------------------


def alert_expressions() -> list[str]:
    return [alert["expr"] for alert in alerts(prometheus_rule()).values()]


def test_the_documented_metrics_are_what_the_operator_exports(exported: dict[str, set[str]]) -> None:
    assert exported.keys() >= DOCUMENTED_METRICS, sorted(DOCUMENTED_METRICS - exported.keys())


def test_dashboard_and_alerts_use_only_exported_metrics(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    queries = [t["expr"] for _, t in targets(dashboard)]
    queries += [v["query"]["query"] for v in variables(dashboard).values() if isinstance(v["query"], dict)]
    used = {name for expr in queries + alert_expressions() for name in METRIC_NAME.findall(expr)}

    assert used - DOCUMENTED_METRICS == set()
    assert used - exported.keys() == set()


def test_dashboard_shows_every_documented_metric(dashboard: dict[str, Any]) -> None:
    used = {name for _, t in targets(dashboard) for name in METRIC_NAME.findall(t["expr"])}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in DOCUMENTED_METRICS}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families - shown == set()


def test_dashboard_queries_are_promql_without_grafana_variables(dashboard: dict[str, Any], tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) == sum(1 for _ in targets(dashboard))
    assert not [q for q in queries if "$" in q]

    # promtool parses a rules file's expressions without a Prometheus: each query becomes a recording rule.
    rules = [{"record": f"dashboard_query_{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def series_of(registry: CollectorRegistry, samples: int) -> list[dict[str, str]]:
    """promtool input series: every sample of `registry`, scraped `samples` times with the chart's target labels."""
    series = []
    for family in registry.collect():
        for sample in family.samples:
            labels = {**sample.labels, **SCRAPE_LABELS}
            selector = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            series.append({"series": f"{sample.name}{{{selector}}}", "values": f"{sample.value!r}x{samples - 1}"})
    return series


def test_every_dashboard_query_returns_data_after_one_sync(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # The sync was counted before the first scrape, so its counters appear already incremented and rate() over two
    # minutes of 15s scrapes sees no increase: 0, or NaN for a ratio or quantile, which is still data. No panel may
    # stay empty for want of, say, a failed run.
    queries = dashboard_queries(dashboard)
    unit_test = {
        "tests": [
            {
                "interval": "15s",
                "input_series": series_of(one_sync_registry(), samples=9),
                "promql_expr_test": [{"expr": f"absent({q})", "eval_time": "2m", "exp_samples": []} for q in queries],
            }
        ]
    }
    (tmp_path / "dashboard.test.yaml").write_text(yaml.safe_dump(unit_test, width=1_000_000))
    tested = promtool("test", "rules", "dashboard.test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- the ConfigMap ------------------------------------------------------------------------------------------------


def dashboard_config_maps(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    docs = render(values, include_crds=False)
    return [d for d in docs if d["kind"] == "ConfigMap" and "cdi-operator.json" in d.get("data", {})]


def test_chart_ships_the_dashboard_for_grafanas_sidecar() -> None:
    [config_map] = dashboard_config_maps({})

    assert config_map["metadata"]["name"].endswith("-dashboard")
    assert config_map["metadata"]["namespace"] == "cdi-system"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cdi-operator"
    shipped = config_map["data"]["cdi-operator.json"]
    assert shipped == DASHBOARD.read_text(encoding="utf-8")
    assert json.loads(shipped) == load_dashboard()


def test_dashboard_config_map_goes_where_grafana_looks() -> None:
    values = {
        "grafanaDashboard": {
            "namespace": "monitoring",
            "labels": {"grafana_dashboard": "1", "team": "data"},
            "annotations": {"grafana_folder": "CDI"},
        }
    }
    [config_map] = dashboard_config_maps(values)

    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["team"] == "data"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "CDI"}


def test_dashboard_config_map_can_be_turned_off() -> None:
    assert dashboard_config_maps({"grafanaDashboard": {"enabled": False}}) == []
