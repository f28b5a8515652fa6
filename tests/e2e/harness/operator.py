"""`cdi operator` as a subprocess with the admin kubeconfig: restartable, its log in a file shown on timeouts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .node import RUNNER_IMAGE


class OperatorProcess:
    def __init__(self, kubeconfig: str, log_path: Path, env: Mapping[str, str]) -> None:
        """`env` adds to (and may override) the base: this machine's environment without CDI_*/KUBERNETES_*, the
        kubeconfig, a runner image, and no /metrics port that another operator on this machine may hold."""
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CDI_", "KUBERNETES_"))},
            "KUBECONFIG": kubeconfig,
            "CDI_RUNNER_IMAGE": RUNNER_IMAGE,
            "CDI_METRICS_PORT": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdi_operator.cli", "operator"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "operator log (tail):\n" + "\n".join(self.log_text().splitlines()[-lines:])
