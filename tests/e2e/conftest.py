"""Session fixtures for the e2e tests: a real Kubernetes control plane and a local kubelet.

By default the tests start their own etcd + kube-apiserver + kube-controller-manager (binaries from
hack/controlplane/build.sh or $KUBEBUILDER_ASSETS) and a local kubelet that runs pods as local processes.
With CDI_E2E_NODE=containerd a real node (hack/node.sh: containerd, kubelet, kube-proxy, kube-scheduler) runs the
pods in containers of the image hack/image.sh built (harness/node.py).
With CDI_E2E_KUBECONFIG=/path/to/kubeconfig they run against that cluster instead (e.g. kind); its nodes run
the pods then, and the tests create and delete only their own namespaces and cluster-scoped test objects.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from harness import Cluster, KubeletConfig, LocalControlPlane, LocalKubelet, postgres
from harness.containerd import image_archive
from harness.helpers import wait_until
from harness.node import Node, node_mode
from kubernetes import client, config
from kubernetes.client import ApiException
from test_crds_apiserver import install_crds

EXISTING_CLUSTER_ENV = "CDI_E2E_KUBECONFIG"


_active: dict[str, object] = {}


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    existing = os.environ.get(EXISTING_CLUSTER_ENV)
    if existing:
        yield Cluster(kubeconfig=Path(existing), control_plane=None)
        return
    # pytest keeps the last few base temp dirs, so the logs survive the session for a post-mortem.
    base = tmp_path_factory.mktemp("controlplane")
    if node_mode():
        # Not under pytest's base temp, which other sessions on this machine may rotate away while this one runs.
        yield from _with_node(base, Path(tempfile.mkdtemp(prefix="cdi-e2e-node-")))
        return
    with LocalControlPlane(base_dir=base, keep_dir=True) as control_plane:
        _active["control_plane"] = control_plane
        try:
            yield Cluster(kubeconfig=control_plane.kubeconfig, control_plane=control_plane)
        finally:
            _active.pop("control_plane", None)


def _with_node(base: Path, node_dir: Path) -> Iterator[Cluster]:
    archive = image_archive()
    node = Node(node_dir)
    try:
        ip = node.network()
        with LocalControlPlane(base_dir=base, keep_dir=True, bind_address=ip, node_network=True) as control_plane:
            _active["control_plane"] = control_plane
            _active["node"] = node
            try:
                node.up(control_plane.kubeconfig, archive)
                yield Cluster(kubeconfig=control_plane.kubeconfig, control_plane=control_plane)
            finally:
                _active.pop("control_plane", None)
                node.down()
    finally:
        _active.pop("node", None)
        node.down()


@pytest.fixture(scope="session")
def node(kube: Cluster) -> Node | None:
    """The real node (CDI_E2E_NODE=containerd), or None."""
    found = _active.get("node")
    return found if isinstance(found, Node) else None


@pytest.fixture(scope="session")
def kubeconfig(kube: Cluster) -> str:
    return str(kube.kubeconfig)


@pytest.fixture(scope="session")
def kube_api(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


def _has_real_nodes(api: client.ApiClient) -> bool:
    nodes = client.CoreV1Api(api).list_node().items
    return any(not ((n.metadata and n.metadata.labels) or {}).get("cdi.ingest.dev/local-kubelet") for n in nodes)


@pytest.fixture(scope="session")
def local_kubelet(
    kube: Cluster, kube_api: client.ApiClient, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKubelet | None]:
    """The local kubelet, or None on a real node or an existing cluster whose own nodes run the pods."""
    if node_mode() or (kube.control_plane is None and _has_real_nodes(kube_api)):
        yield None
        return
    if kube.control_plane is not None:
        host, port, ca = "127.0.0.1", kube.control_plane.apiserver_port, kube.control_plane.ca_cert
    else:
        server = urlparse(kube_api.configuration.host)
        host, port = server.hostname or "127.0.0.1", server.port or 443
        ca = Path(kube_api.configuration.ssl_ca_cert)
    api = config.new_client_from_config(config_file=kubeconfig)
    kubelet = LocalKubelet(
        api,
        KubeletConfig(
            api_host=host,
            api_port=port,
            ca_cert=ca,
            work_dir=tmp_path_factory.mktemp("kubelet"),
            # Our image's entrypoint, for runner pods that give only args.
            default_entrypoint=("cdi",),
        ),
    ).start()
    _active["kubelet"] = kubelet
    try:
        yield kubelet
    finally:
        _active.pop("kubelet", None)
        kubelet.stop()
        api.close()


@pytest.fixture(scope="module")
def crds(kube_api: client.ApiClient) -> list[str]:
    """The project's CRDs from crds/, applied (idempotent) and served; their names."""
    return install_crds(kube_api)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, with its default ServiceAccount (pods need it); deleted afterwards."""
    core = client.CoreV1Api(kube_api)
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{stem}-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name, "labels": {"cdi.ingest.dev/e2e": "true"}}})

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    wait_until(default_sa, 60, f"ServiceAccount {name}/default", interval=0.2)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture(scope="session")
def pg_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """The PostgreSQL server of hack/postgres.sh (the Redshift stand-in): from $CDI_PG_*, else started now. On a
    real node, through a forwarder on the node's address, which pods reach (and the tests too)."""
    settings = postgres.pg_settings()
    if node_mode():
        request.getfixturevalue("kube")
        node = _active["node"]
        assert isinstance(node, Node)
        port = node.forward(settings["CDI_PG_HOST"], int(settings["CDI_PG_PORT"]))
        settings = {**settings, "CDI_PG_HOST": node.ip, "CDI_PG_PORT": str(port)}
    return settings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        control_plane = _active.get("control_plane")
        if isinstance(control_plane, LocalControlPlane):
            report.sections.append(("control plane logs (tail)", control_plane.logs(lines=30)))
        node = _active.get("node")
        if isinstance(node, Node):
            report.sections.append(("node logs (tail)", node.logs(lines=30)))
        kubelet = _active.get("kubelet")
        if isinstance(kubelet, LocalKubelet) and kubelet.errors:
            report.sections.append(("local kubelet errors", "\n".join(kubelet.errors[-30:])))
    return report
