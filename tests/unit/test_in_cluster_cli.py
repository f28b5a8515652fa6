"""`cdi sync` flags: exactly one of -f and --in-cluster; --in-cluster needs --integration and a cluster; the
failure it records when the warehouse cannot be opened."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdi_operator.api.models import RunResult, RunSummary
from cdi_operator.cli import main
from cdi_operator.commands.in_cluster import connect_failure
from cdi_operator.controller.observability import failure_reason
from cdi_operator.warehouses import FailureReason, WarehouseError


@pytest.mark.parametrize(
    "argv",
    [
        ["sync"],
        ["sync", "-f", "examples/x.yaml", "--in-cluster", "--integration", "ns/a"],
        ["sync", "--in-cluster"],
        ["sync", "--in-cluster", "--integration", "ns/a", "--trigger", "cron"],
    ],
)
def test_bad_combinations_are_bad_input(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_in_cluster_without_any_cluster_configuration_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CDI_SERVICEACCOUNT_DIR", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["sync", "--in-cluster", "--integration", "ns/a"]) == 2
    captured = capsys.readouterr()
    assert "cannot load the Kubernetes client configuration" in captured.err
    assert '"result": "Error"' in captured.out  # the JSON summary line, as with --output json


def test_serviceaccount_dir_without_the_service_address_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("c")
    monkeypatch.setenv("CDI_SERVICEACCOUNT_DIR", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["sync", "--in-cluster", "--integration", "ns/a"]) == 2
    assert f"cannot load in-cluster credentials from {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize("reason", [FailureReason.AUTH_FAILED, FailureReason.WARMING_UP, FailureReason.UNREACHABLE])
def test_a_warehouse_that_cannot_be_opened_keeps_its_reason_in_status(reason: FailureReason) -> None:
    """The run message the runner records when connect() fails is read back as that reason by the operator (its
    conditions, e-mails and alerts), not flattened to SyncFailed."""
    message = connect_failure(WarehouseError(reason, "the warehouse said no"))
    summary = RunSummary(trigger="schedule", started_at=datetime.now(UTC), result=RunResult.ERROR, message=message)
    assert failure_reason(summary) == reason.value
    assert "cannot connect to the warehouse: the warehouse said no" in message


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_log_lines_carry_their_fields_in_either_format(log_format: str) -> None:
    import json
    import logging

    from cdi_operator.cli import build_parser
    from cdi_operator.commands.common import LOG_FORMATS

    assert build_parser().parse_args(["--log-format", log_format, "demo"]).log_format == log_format
    record = logging.LogRecord("cdi", logging.WARNING, __file__, 1, "row error", None, None)
    record.fields = {"reason": "INVALID_KEY", "identifier": "email=j***@example.com", "error": 'key "a b"'}
    line = LOG_FORMATS[log_format]().format(record)
    if log_format == "json":
        parsed = json.loads(line)
        assert (parsed["level"], parsed["msg"], parsed["reason"]) == ("warning", "row error", "INVALID_KEY")
        assert parsed["error"] == 'key "a b"'
    else:
        assert 'msg="row error" reason=INVALID_KEY identifier="email=j***@example.com"' in line
        assert 'error="key \\"a b\\""' in line
