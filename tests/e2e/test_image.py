"""The project's image, built by hack/image.sh, run as a container by a private containerd: the entrypoint, the
non-root user the chart names, and a read-only root filesystem with only /tmp writable, as the chart runs it.

No Kubernetes here; the chart's Deployment and the runner pods on a real kubelet are in the CDI_E2E_NODE=containerd
mode of the other e2e tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.containerd import Containerd, image_archive

pytestmark = [pytest.mark.e2e, pytest.mark.image]

REPO = Path(__file__).resolve().parents[2]
VALUES: dict[str, Any] = yaml.safe_load((REPO / "charts/cdi-operator/values.yaml").read_text(encoding="utf-8"))
UID = VALUES["podSecurityContext"]["runAsUser"]
GID = VALUES["podSecurityContext"]["runAsGroup"]


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    runtime = Containerd(tmp_path_factory.mktemp("containerd")).start()
    try:
        runtime.import_image(image_archive())
        yield runtime
    finally:
        runtime.stop()


def test_the_image_runs_as_the_charts_user_by_default(containerd: Containerd) -> None:
    ran = containerd.run(["python", "-c", "import os; print(os.getuid(), os.getgid(), os.environ['HOME'])"])
    assert ran.returncode == 0, ran.output
    assert ran.output.split() == [str(UID), str(GID), "/tmp"]


def test_the_default_command_is_the_operator(containerd: Containerd) -> None:
    """ENTRYPOINT cdi, CMD operator: outside a cluster it stops at once with the setting it lacks (exit 2)."""
    ran = containerd.run([], read_only=True, tmpfs=["/tmp"])
    assert ran.returncode == 2, ran.output
    assert "CDI_RUNNER_IMAGE" in ran.output, ran.output


def test_cdi_demo_on_a_read_only_root_with_only_tmp_writable(containerd: Containerd) -> None:
    ran = containerd.run(["cdi", "demo"], read_only=True, tmpfs=["/tmp"])  # as the image's user, 10001
    assert ran.returncode == 0, ran.output
    assert "Traceback" not in ran.output, ran.output


def test_nothing_but_tmp_is_writable(containerd: Containerd) -> None:
    probe = (
        "import os\n"
        "for d in ('/', '/opt/venv', '/opt/venv/lib', '/etc', '/tmp'):\n"
        "    try:\n"
        "        open(os.path.join(d, '.probe'), 'w').close(); print(d, 'writable')\n"
        "    except OSError:\n"
        "        print(d, 'read-only')\n"
    )
    ran = containerd.run(["python", "-c", probe], read_only=True, tmpfs=["/tmp"])
    assert ran.returncode == 0, ran.output
    assert [line for line in ran.output.splitlines() if line.endswith("writable")] == ["/tmp writable"], ran.output
