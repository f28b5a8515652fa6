"""A real Prometheus server (Debian's `prometheus` package) scraping local targets every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from . import procs
from .controlplane import free_port
from .helpers import wait_until


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise RuntimeError("prometheus is not installed; run: apt-get install prometheus (.ci/run does)")
    return path


class Prometheus:
    def __init__(self, work_dir: Path, targets: list[str], job: str = "cdi-operator") -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work_dir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.proc = procs.spawn(
            [
                prometheus_binary(),
                f"--config.file={self.work_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            self.log,
        )
        wait_until(self._ready, 60, "Prometheus ready", interval=0.2, details=lambda: procs.tail(self.log))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            procs.stop(self.proc)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or scalar, as a one-element list); AssertionError on a bad query."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus refused {expr!r}: {exc.read().decode(errors='replace')}") from None
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"value": data["result"]}]
        return list(data["result"])

    def target_health(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            body = json.load(response)
        return [t["health"] for t in body["data"]["activeTargets"]]
