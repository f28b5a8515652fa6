"""The real-node mode of the e2e tests (CDI_E2E_NODE=containerd): hack/node.sh's containerd, kubelet, kube-proxy
and kube-scheduler run the pods in containers of the image hack/image.sh built.

Pods reach this host only on the node's bridge address, so what they must reach listens there: the apiserver
(LocalControlPlane.bind_address), the Braze emulator (`service_host()`), and PostgreSQL through a forwarder from
the bridge address to the shared server on loopback. The host reaches pods and Services (webhook, metrics) through
kube-proxy's rules, as in a cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_SCRIPT = REPO_ROOT / "hack" / "node.sh"
NODE_ENV = "CDI_E2E_NODE"
IMAGE_REPOSITORY, IMAGE_TAG = "cdi-operator", "dev"  # what hack/image.sh builds and node.sh imports
RUNNER_IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"  # also in local mode, where the local kubelet ignores it


def node_mode() -> bool:
    value = os.environ.get(NODE_ENV, "")
    if value not in ("", "containerd"):
        raise ValueError(f"{NODE_ENV}={value!r}: the only real-node mode is 'containerd' (unset: the local kubelet)")
    return value == "containerd"


_host = "127.0.0.1"


def service_host() -> str:
    """The address on which what pods must reach listens: the node's bridge address, or loopback."""
    return _host


def _node_sh(*args: str) -> dict[str, str]:
    result = subprocess.run(["bash", str(NODE_SCRIPT), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"hack/node.sh {args[0]} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@dataclass
class Node:
    dir: Path
    ip: str = ""
    forwarders: list[Forwarder] = field(default_factory=list)

    def network(self) -> str:
        atexit.register(self.down)  # also when pytest dies between here and the fixture's finalizer
        self.ip = _node_sh("network", str(self.dir))["CDI_NODE_IP"]
        global _host
        _host = self.ip
        return self.ip

    def up(self, kubeconfig: Path, *archives: Path) -> None:
        _node_sh("up", str(self.dir), str(kubeconfig), *map(str, archives))

    def forward(self, target_host: str, target_port: int) -> int:
        """A port on the node's address that pods can reach, forwarded to target (e.g. a loopback-only server)."""
        forwarder = Forwarder(self.ip, (target_host, target_port))
        self.forwarders.append(forwarder)
        return forwarder.port

    def down(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders.clear()
        if self.dir.exists():
            subprocess.run(["bash", str(NODE_SCRIPT), "down", str(self.dir)], capture_output=True, check=False)

    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container's process through the node's containerd, as a node crash or the OOM killer would:
        it dies without running any exit code of its own, and the kubelet sees it exit with 137."""
        ctr = ["ctr", "--address", str(self.dir / "containerd.sock"), "-n", "k8s.io"]
        subprocess.run(
            [*ctr, "tasks", "kill", "-s", "SIGKILL", container_id],
            capture_output=True,
            text=True,
            check=True,
        )

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name in ("containerd", "kubelet", "kube-proxy", "kube-scheduler"):
            path = self.dir / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"==> {path} <==\n" + "\n".join(tail))
        return "\n".join(parts)


def sigkill_container(container_id: str, node: Node | None) -> None:
    """SIGKILL the process of a container of status.containerStatuses[].containerID: by pid for the local kubelet
    (`local://PID`), through containerd on the real node (`containerd://ID`)."""
    runtime, _, ident = container_id.partition("://")
    if runtime == "local":
        os.kill(int(ident), signal.SIGKILL)
    elif runtime == "containerd" and node is not None:
        node.kill_container(ident)
    else:
        raise ValueError(f"cannot kill container {container_id!r}: neither the local kubelet's nor this node's")


class Forwarder:
    """A TCP forwarder: a thread accepting on (host, free port), two pump threads per connection."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
