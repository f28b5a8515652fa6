"""hack/node.sh's one-node-per-machine lock: a node whose owner was killed without its `down` (a CI run stopped
mid-way) is taken down from its own record by the next run, and a node whose owner still runs is left alone.

On bridges and ranges of their own, so that this runs beside the real node of a CDI_E2E_NODE=containerd session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.node import NODE_SCRIPT

pytestmark = pytest.mark.e2e

BRIDGE, SERVICE_BRIDGE = "cdi-tnode0", "cdi-tsvc0"
ENV = {
    **os.environ,
    "CDI_NODE_BRIDGE": BRIDGE,
    "CDI_NODE_SERVICE_BRIDGE": SERVICE_BRIDGE,
    "CDI_NODE_CIDR": "10.214.0.0/24",
    "CDI_NODE_SERVICE_CIDR": "10.214.1.0/24",
}


def node_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(NODE_SCRIPT), *args], env=ENV, capture_output=True, text=True, check=False)


def bridge_alias() -> str | None:
    path = Path(f"/sys/class/net/{BRIDGE}/ifalias")
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[list[Path]]:
    made = [tmp_path / name for name in ("killed", "next", "third")]
    try:
        yield made
    finally:
        for directory in made:
            node_sh("down", str(directory))


def test_a_node_left_by_a_killed_run_is_taken_down_by_the_next(dirs: list[Path]) -> None:
    killed, following, third = dirs
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text(encoding="utf-8")
    # The owner is the process that runs the script: here a child that exits, as a killed pytest would.
    owner = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"]
    subprocess.run([*owner, "bash", str(NODE_SCRIPT), "network", str(killed)], env=ENV, check=True, capture_output=True)
    assert f"dir={killed} " in (bridge_alias() or "")

    taken = node_sh("network", str(following))
    assert taken.returncode == 0, taken.stderr
    assert f"left from {killed}, whose owner is gone" in taken.stderr
    assert f"dir={following} owner={os.getpid()}:" in (bridge_alias() or "")
    assert not (killed / "bridge").exists()  # the killed run's record was used and put away

    refused = node_sh("network", str(third))
    assert refused.returncode == 1
    assert f"bridge {BRIDGE} exists: another node is up" in refused.stderr
    assert f"dir={following} " in (bridge_alias() or "")

    assert node_sh("down", str(following)).returncode == 0
    assert bridge_alias() is None
    assert not Path(f"/sys/class/net/{SERVICE_BRIDGE}").exists()
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text(encoding="utf-8") == forwarding
