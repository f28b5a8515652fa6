"""A local control plane for the e2e tests: etcd, kube-apiserver and kube-controller-manager.

Binaries come from hack/controlplane/build.sh (built once from Go modules, cached under ~/.cache), or from
TEST_ASSET_<NAME> / $KUBEBUILDER_ASSETS like controller-runtime's envtest.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import config as k8s_config

from . import pki as pki_mod
from . import procs
from .serviceproxy import ServiceProxy, write_egress_config

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "controlplane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "helm")
SERVICE_CIDR = "10.0.0.0/24"
# Enough for Jobs created by CronJobs, garbage collection of their children, namespace deletion, and the
# default ServiceAccount that the ServiceAccount admission plugin requires before a Pod can be created.
CONTROLLERS = (
    "cronjob",
    "job",
    "garbagecollector",
    "namespace",
    "ttl-after-finished",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
    "deployment",  # the operator installed from the Helm chart
    "replicaset",
)
# With a real node: the taint of a NotReady node lifted once it is Ready, and EndpointSlices for kube-proxy.
NODE_CONTROLLERS = ("nodelifecycle", "endpointslice")


class ControlPlaneError(RuntimeError):
    pass


def _asset_env_name(binary: str) -> str:
    return "TEST_ASSET_" + binary.upper().replace("-", "_")


def _lookup(binary: str, assets_dir: str | None) -> Path | None:
    explicit = os.environ.get(_asset_env_name(binary))
    if explicit:
        return Path(explicit)
    if assets_dir and os.access(Path(assets_dir, binary), os.X_OK):
        return Path(assets_dir, binary)
    return None


def find_binaries(build_if_missing: bool = True) -> dict[str, Path]:
    """TEST_ASSET_<NAME>, then $KUBEBUILDER_ASSETS/<name>, then the build script's cache (built on demand)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found = {b: _lookup(b, assets) for b in BINARIES}
    if all(found.values()):
        return {b: p for b, p in found.items() if p}
    if not build_if_missing:
        missing = sorted(b for b, p in found.items() if not p)
        raise ControlPlaneError(f"missing {missing}; run: export KUBEBUILDER_ASSETS=$(bash {BUILD_SCRIPT} | tail -1)")
    # Warm cache: returns in a second. Cold: a long Go build; CI runs the script before pytest.
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    built = result.stdout.strip().splitlines()[-1]
    found = {b: _lookup(b, built) for b in BINARIES}
    missing = sorted(b for b, p in found.items() if not p)
    if missing:
        raise ControlPlaneError(f"{BUILD_SCRIPT} printed {built}, which lacks {missing}")
    return {b: p for b, p in found.items() if p}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str = "admin") -> None:
    # JSON is YAML; no yaml dependency needed and no quoting pitfalls.
    import json

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cdi-e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "cdi-e2e", "context": {"cluster": "cdi-e2e", "user": user}}],
        "current-context": "cdi-e2e",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


@dataclass
class Cluster:
    """What the e2e tests run against: the local control plane, or an existing cluster (no control_plane)."""

    kubeconfig: Path
    control_plane: LocalControlPlane | None

    @property
    def is_local(self) -> bool:
        return self.control_plane is not None


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        self.proc = procs.spawn(self.argv, self.log, cwd=cwd)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.proc.returncode}; last lines of {self.log}:\n{procs.tail(self.log)}"
            )

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)


@dataclass
class LocalControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports in a temporary directory.

    Use as a context manager; it tears everything down on exit, also after a failed start. The directory
    (logs, certs, kubeconfig) is removed unless keep_dir is set or the start failed.
    """

    binaries: dict[str, Path] = field(default_factory=dict)
    base_dir: Path | None = None
    keep_dir: bool = False
    start_timeout: float = 120.0
    components: list[Component] = field(default_factory=list)
    service_proxy: ServiceProxy | None = None
    apiserver_port: int = 0
    pki: pki_mod.Pki | None = None
    # A real node (harness/node.py): the apiserver listens on the node's bridge address, which pods reach, and
    # reaches Services and kubelets through the node's network instead of harness/serviceproxy.py.
    bind_address: str = "127.0.0.1"
    node_network: bool = False

    @property
    def dir(self) -> Path:
        assert self.base_dir is not None, "control plane not started"
        return self.base_dir

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.bind_address}:{self.apiserver_port}"

    @property
    def ca_cert(self) -> Path:
        assert self.pki is not None
        return self.pki.ca.cert

    def __enter__(self) -> LocalControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop(failed=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(failed=exc[0] is not None)

    def start(self) -> None:
        if not self.binaries:
            self.binaries = find_binaries()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="cdi-e2e-controlplane-"))
        self.pki = pki = pki_mod.generate(self.dir / "pki", extra_ips=(self.bind_address,))
        etcd_client, etcd_peer = free_port(), free_port()
        self.apiserver_port = free_port(self.bind_address)
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, pki.admin.cert, pki.admin.key)
        if self.node_network:
            network = [
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki.admin.cert}",
                f"--kubelet-client-key={pki.admin.key}",
            ]
        else:
            egress_config = self.dir / "egress-selector.yaml"
            proxy_api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
            self.service_proxy = ServiceProxy(self.dir / "egress.sock", proxy_api).start()
            write_egress_config(egress_config, self.service_proxy.socket_path)
            network = [f"--egress-selector-config-file={egress_config}"]  # webhook Services: serviceproxy.py

        etcd = Component(
            "etcd",
            [
                str(self.binaries["etcd"]),
                "--name=e2e",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.dir / "etcd.log",
        )
        apiserver = Component(
            "kube-apiserver",
            [
                str(self.binaries["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.bind_address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving.cert}",
                f"--tls-private-key-file={pki.serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--allow-privileged=true",
                *network,
                "--profiling=false",
                "--v=1",
            ],
            self.dir / "kube-apiserver.log",
        )
        controller_manager = Component(
            "kube-controller-manager",
            [
                str(self.binaries["kube-controller-manager"]),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(CONTROLLERS + (NODE_CONTROLLERS if self.node_network else ()))}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
                "--v=1",
            ],
            self.dir / "kube-controller-manager.log",
        )

        etcd.start(self.dir)
        self.components.append(etcd)
        self._wait(etcd, lambda: _http_ok(f"127.0.0.1:{etcd_client}", "/health"), "etcd /health")
        apiserver.start(self.dir)
        self.components.append(apiserver)
        self._wait(apiserver, self._readyz, "kube-apiserver /readyz")
        controller_manager.start(self.dir)
        self.components.append(controller_manager)
        # The controller manager serves nothing here; its serviceaccount controller creating the default
        # ServiceAccount shows that it is connected and running its controllers.
        self._wait(
            controller_manager,
            lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"),
            "kube-controller-manager to create ServiceAccount default/default",
        )

    def _wait(self, component: Component, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            component.check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}; "
                    f"last lines of {component.log}:\n{procs.tail(component.log)}"
                )
            time.sleep(0.25)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def _get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPSConnection(
            self.bind_address, self.apiserver_port, context=self._ssl_context(), timeout=5
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def _get_ok(self, path: str) -> bool:
        try:
            return self._get(path)[0] == 200
        except OSError:
            return False

    def _readyz(self) -> bool:
        return self._get_ok("/readyz")

    def readyz_verbose(self) -> str:
        return self._get("/readyz?verbose")[1]

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"==> {c.log} <==\n{procs.tail(c.log, lines)}" for c in self.components)

    def stop(self, failed: bool = False) -> None:
        # Reverse order: the controller manager and apiserver first, so nothing writes to a dead etcd.
        for component in reversed(self.components):
            component.stop()
        if self.service_proxy is not None:
            self.service_proxy.stop()
            self.service_proxy = None
        if self.base_dir is not None and not (self.keep_dir or failed):
            shutil.rmtree(self.base_dir, ignore_errors=True)


def _http_ok(hostport: str, path: str) -> bool:
    conn = http.client.HTTPConnection(hostport, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
