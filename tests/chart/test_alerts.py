"""The chart's PrometheusRule: promtool accepts the rendered rules, each alert fires when it should and stays quiet
when it should not (the unit tests in alerts/*.test.yaml, run by `promtool test rules` against the rendered file),
and the thresholds in values.yaml reach the rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.helm import find, render

from cdi_operator.api import reasons

ALERT_TESTS = Path(__file__).parent / "alerts"
RULES_FILE = "cdi-operator.rules.yaml"  # what the unit tests' rule_files name
# The unit tests' series carry the scrape labels of this release: job cdi-operator-metrics in cdi-system.
VALUES: dict[str, Any] = {
    "fullnameOverride": "cdi-operator",
    "prometheusRule": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
}
SEVERITIES = {"warning", "critical"}


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if nested else value
    return out


def prometheus_rule(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return find(render(merged(VALUES, values or {}), include_crds=False), "PrometheusRule")


def alerts(rule: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def write_rules(rule: Mapping[str, Any], directory: Path) -> Path:
    path = directory / RULES_FILE
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False), encoding="utf-8")
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, check=False)


def run_unit_test(rule: Mapping[str, Any], test_file: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    write_rules(rule, directory)
    shutil.copy(test_file, directory / test_file.name)
    return promtool("test", "rules", test_file.name, cwd=directory)


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    return prometheus_rule()


def test_rendered_rules_pass_promtool_check(rule: dict[str, Any], tmp_path: Path) -> None:
    # Also parses every annotation as a Prometheus template: a Helm-escaping slip shows here.
    checked = promtool("check", "rules", str(write_rules(rule, tmp_path)), cwd=tmp_path)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [g["name"] for g in rule["spec"]["groups"]] == ["cdi-operator"]


@pytest.mark.parametrize(
    "test_file", sorted(ALERT_TESTS.glob("*.test.yaml")), ids=lambda p: p.name.removesuffix(".test.yaml")
)
def test_alert_fires_when_it_should_and_only_then(rule: dict[str, Any], test_file: Path, tmp_path: Path) -> None:
    tested = run_unit_test(rule, test_file, tmp_path)

    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not(rule: dict[str, Any]) -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for test_file in ALERT_TESTS.glob("*.test.yaml"):
        for test in yaml.safe_load(test_file.read_text(encoding="utf-8"))["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case["exp_alerts"] else quiet).add(case["alertname"])

    assert set(alerts(rule)) == fired
    assert set(alerts(rule)) == quiet


def test_each_alert_tells_the_on_call_what_to_check(rule: dict[str, Any]) -> None:
    for name, alert in alerts(rule).items():
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["annotations"]["summary"].strip(), name
        description = alert["annotations"]["description"]
        assert "kubectl " in description, name
        # Templated by Prometheus, not left as Helm syntax or rendered away by Helm.
        for text in alert["annotations"].values():
            assert text.count("{{") == text.count("}}"), name
        if "namespace" in alert["expr"] and name != "CdiOperatorDown":
            assert "kubectl get cdi -n {{ $labels.namespace }} {{ $labels.integration }} -o yaml" in description
            assert "status.lastSync.job" in description, name


def test_rule_is_opt_in_and_carries_the_labels_prometheus_selects_by() -> None:
    # Without the Prometheus Operator's CRDs, a PrometheusRule would fail the install.
    assert not [d for d in render({}, include_crds=False) if d["kind"] == "PrometheusRule"]

    rule = prometheus_rule({"prometheusRule": {"labels": {"release": "kube-prometheus-stack"}}})
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cdi-operator"
    assert rule["metadata"]["namespace"] == "cdi-system"


def test_operator_down_alert_follows_the_charts_scrape_job() -> None:
    # Without the chart's ServiceMonitor the scrape job's name is unknown: no alert on a guess.
    assert "CdiOperatorDown" not in alerts(prometheus_rule({"metrics": {"serviceMonitor": {"enabled": False}}}))

    renamed = alerts(prometheus_rule({"fullnameOverride": "cdi"}))["CdiOperatorDown"]
    assert 'job="cdi-metrics"' in renamed["expr"]


@pytest.mark.parametrize(
    ("values", "alert", "field", "rendered"),
    [
        ({"watermarkLagSeconds": 3600}, "CdiWatermarkLagHigh", "expr", "> 3600"),
        ({"rowErrorRatio": 0.2}, "CdiRowErrorRatioHigh", "expr", "> 0.2"),
        ({"syncFailureWindow": "6h"}, "CdiSyncFailing", "expr", "[6h]"),
        ({"syncFailureWindow": "6h"}, "CdiSyncFailing", "expr", "offset 6h"),
        ({"connectionTestFailingFor": "2h"}, "CdiConnectionTestFailing", "for", "2h"),
        ({"for": "15m"}, "CdiWatermarkLagHigh", "for", "15m"),
        ({"for": "15m"}, "CdiRowErrorRatioHigh", "for", "15m"),
    ],
)
def test_threshold_values_reach_the_rules(
    rule: dict[str, Any], values: dict[str, Any], alert: str, field: str, rendered: str
) -> None:
    changed = alerts(prometheus_rule({"prometheusRule": values}))[alert]

    assert rendered in changed[field]
    assert rendered not in alerts(rule)[alert][field]


def test_connection_test_alert_tolerates_the_operators_retest_interval() -> None:
    # A broken connection fails once per retest; the alert must bridge that gap or it would never fire.
    rule = prometheus_rule({"operator": {"retestFailedSeconds": 1800}})

    # 1800 s between retests + 60 s resync + the 600 s a connection test may take + one minute of scraping.
    assert "[2520s]" in alerts(rule)["CdiConnectionTestFailing"]["expr"]


def test_lower_watermark_threshold_fires_on_a_lag_the_default_tolerates(tmp_path: Path) -> None:
    two_hours_old = {
        "rule_files": [RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'cdi_sync_watermark_timestamp_seconds{namespace="team-a", integration="orders"}',
                        "values": "-7200x20",
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "CdiWatermarkLagHigh",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "warning", "namespace": "team-a", "integration": "orders"}}
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "source" / "lag.test.yaml"
    test_file.parent.mkdir()
    test_file.write_text(yaml.safe_dump(two_hours_old), encoding="utf-8")

    lowered = prometheus_rule({"prometheusRule": {"watermarkLagSeconds": 3600}})
    lowered_dir, default_dir = tmp_path / "lowered", tmp_path / "default"
    lowered_dir.mkdir()
    default_dir.mkdir()
    # promtool compares annotations too: without them in the rules, exp_alerts need only the labels.
    fired = run_unit_test(strip_annotations(lowered), test_file, lowered_dir)
    assert fired.returncode == 0, fired.stdout + fired.stderr
    quiet = run_unit_test(strip_annotations(prometheus_rule()), test_file, default_dir)
    assert quiet.returncode != 0, quiet.stdout + quiet.stderr
    assert "got:[]" in "".join((quiet.stdout + quiet.stderr).split()), quiet.stdout + quiet.stderr


def strip_annotations(rule: Mapping[str, Any]) -> dict[str, Any]:
    groups = [
        {**group, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]]}
        for group in rule["spec"]["groups"]
    ]
    return {**rule, "spec": {"groups": groups}}


def test_the_reasons_and_conditions_the_alerts_name_are_the_operators(rule: dict[str, Any]) -> None:
    # The on-call follows these names to kubectl; a reason the operator does not write would lead nowhere.
    text = yaml.safe_dump(rule["spec"], width=10_000)
    named = set(re.findall(r"reason=([A-Za-z]+)", text))
    named |= set(re.findall(r"\b(Ready|Synced|ConnectionVerified|Stalled|Reconciling) (?:and|condition)", text))
    known = {value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)}

    assert named, "the alerts name no reason or condition any more: drop this test"
    assert named <= known, named - known
