"""A private containerd (Debian's package) for running the project's image as a container, without Kubernetes.

Everything lives in one directory (socket, root, state); the containers get a network namespace of their own with
only loopback, unless `host_network` is asked for. Needs root, `containerd`, `ctr` and `runc`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import procs

REPO_ROOT = Path(__file__).resolve().parents[3]
IMAGE_SCRIPT = REPO_ROOT / "hack" / "image.sh"
IMAGE = "docker.io/library/cdi-operator:dev"  # what `docker save cdi-operator:dev` becomes in containerd


def image_archive() -> Path:
    """$CDI_IMAGE_ARCHIVE (what .ci/run built), else the archive hack/image.sh builds (quick when nothing changed)."""
    given = os.environ.get("CDI_IMAGE_ARCHIVE")
    if given:
        return Path(given)
    result = subprocess.run(["bash", str(IMAGE_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{IMAGE_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr
    stdout: str


@dataclass
class Containerd:
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    imported: set[Path] = field(default_factory=set)

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    def start(self) -> Containerd:
        missing = [b for b in ("containerd", "ctr", "runc") if shutil.which(b) is None]
        if missing:
            raise RuntimeError(f"missing {missing}: install Debian's containerd and runc (.ci/run does)")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.dir / "ttrpc.sock"}"\n'
            '[metrics]\n  address = ""\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.dir / "opt"}"\n'
        )
        self.proc = procs.spawn(["containerd", "--config", str(config)], self.dir / "containerd.log")
        procs.wait_for(
            lambda: self.ctr("version", check=False).returncode == 0,
            30,
            "containerd to answer",
            details=lambda: procs.tail(self.dir / "containerd.log"),
        )
        return self

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "cdi-tests", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def import_image(self, archive: Path) -> None:
        if archive not in self.imported:
            self.ctr("images", "import", str(archive))
            self.imported.add(archive)

    def run(
        self,
        args: Sequence[str],
        *,
        image: str = IMAGE,
        read_only: bool = False,
        tmpfs: Sequence[str] = (),
        mounts: Mapping[str, str] = {},
        writable_mounts: Mapping[str, str] = {},
        env: Mapping[str, str] = {},
        host_network: bool = False,
        timeout: float = 300,
    ) -> Run:
        """Runs `args` in the image to its end, as the image's USER (ctr 1.6 cannot set another). `args` is the
        whole command line, as ctr replaces the entrypoint; none runs the image's ENTRYPOINT and CMD."""
        options = ["--rm"]
        if read_only:
            options.append("--read-only")
        if host_network:
            options.append("--net-host")
        for path in tmpfs:
            options += ["--mount", f"type=tmpfs,src=tmpfs,dst={path},options=rw:nosuid:nodev:mode=1777"]
        for source, target in mounts.items():
            options += ["--mount", f"type=bind,src={source},dst={target},options=rbind:ro"]
        for source, target in writable_mounts.items():
            options += ["--mount", f"type=bind,src={source},dst={target},options=rbind:rw"]
        for name, value in env.items():
            options += ["--env", f"{name}={value}"]
        name = f"cdi-{uuid.uuid4().hex[:12]}"
        result = self.ctr("run", *options, image, name, *args, check=False, timeout=timeout)
        return Run(result.returncode, result.stdout + result.stderr, result.stdout)

    def stop(self) -> None:
        if self.proc is not None:
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            time.sleep(0.5)
            for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "delete", "-f", container, check=False)
                self.ctr("containers", "rm", container, check=False)
            procs.stop(self.proc)
            self.proc = None
        subprocess.run(["umount", "-R", "-l", str(self.dir / "state")], capture_output=True, check=False)
        shutil.rmtree(self.dir / "root", ignore_errors=True)
