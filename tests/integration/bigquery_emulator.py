"""goccy's bigquery-emulator (GoogleSQL's analyzer over SQLite, built by hack/bigquery-emulator/build.sh) on loopback:
the engine of the `googlesql` test tier.

The binary is `$CDI_BIGQUERY_EMULATOR`; when that is unset the build script is run (it reuses its cache under
~/.cache, so only the first run on a machine builds). The emulator starts in under a second with every dataset in
memory; the tests create their tables through google-cloud-bigquery like a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from processes import stop

REPO = Path(__file__).resolve().parents[2]
BINARY_ENV = "CDI_BIGQUERY_EMULATOR"
START_TIMEOUT_SECONDS = 30.0


def binary() -> str:
    path = os.environ.get(BINARY_ENV)
    if path:
        return path
    built = subprocess.run(
        ["bash", str(REPO / "hack" / "bigquery-emulator" / "build.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
    )
    return built.stdout.strip().splitlines()[-1]


class BigQueryEmulator:
    """`with BigQueryEmulator(project, log) as bq:` serves BigQuery's REST API v2 on `bq.url`."""

    def __init__(self, project: str, log: Path) -> None:
        self.project = project
        self.log = log
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BigQueryEmulator:
        args = [binary(), f"--project={self.project}", "--host=127.0.0.1", "--port=0", "--grpc-port=0"]
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.url:
            found = re.search(r"REST server listening at (\S+)", self.log.read_text(errors="replace"))
            if found:
                self.url = "http://" + found.group(1)
            elif self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the BigQuery emulator did not start: {self.log.read_text()[-2000:]}")
            else:
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self._proc)
