"""The apiserver's way to in-cluster Services (admission webhooks) when pods are local processes.

A cluster's apiserver reaches a webhook Service through cluster DNS and the Service's endpoints. Neither exists
here: the local kubelet's pods have the address 127.0.0.1, which Endpoints and EndpointSlices refuse. So the
apiserver is given an egress selector (`--egress-selector-config-file`, the mechanism Konnectivity uses) that sends
its "cluster" traffic through this HTTP CONNECT proxy on a Unix socket. For `CONNECT <cluster IP>:<port>` the proxy
finds the Service, picks a running pod its selector matches, resolves the target port (by number or by the
container port's name) and splices the connection to 127.0.0.1:<that port>. The TLS session stays end to end
between the apiserver and the pod, so the webhook's certificate is checked against the Service's DNS name as in a
cluster.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import selectors
import socket
import socketserver
import threading
from pathlib import Path

from kubernetes import client

log = logging.getLogger("cdi.e2e.serviceproxy")

EGRESS_CONFIG = """apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        uds:
          udsName: {socket}
"""


def write_egress_config(path: Path, socket_path: Path) -> None:
    path.write_text(EGRESS_CONFIG.format(socket=socket_path), encoding="utf-8")


def resolve(api: client.ApiClient, host: str, port: int) -> int:
    """The local port serving a Service's `<cluster IP>:<port>` (what the apiserver dials for a webhook Service) or
    `<service>.<namespace>.svc[.cluster.local]:<port>`; LookupError otherwise."""
    core = client.CoreV1Api(api)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        parts = host.split(".")
        if len(parts) < 3 or parts[2] != "svc":
            raise LookupError(f"{host} is neither a cluster IP nor a Service's DNS name") from None
        service = core.read_namespaced_service(parts[0], parts[1])
    else:
        matches = [s for s in core.list_service_for_all_namespaces().items if s.spec.cluster_ip == host]
        if not matches:
            raise LookupError(f"no Service has the cluster IP {host}")
        service = matches[0]
    name, namespace = service.metadata.name, service.metadata.namespace
    service_port = next((p for p in service.spec.ports or [] if p.port == port), None)
    if service_port is None:
        raise LookupError(f"Service {namespace}/{name} has no port {port}")
    selector = ",".join(f"{k}={v}" for k, v in (service.spec.selector or {}).items())
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    running = [p for p in pods if p.status and p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    if not running:
        raise LookupError(f"Service {namespace}/{name} has no running pod")
    target = service_port.target_port if service_port.target_port is not None else port
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in running[0].spec.containers:
        for container_port in container.ports or []:
            if container_port.name == target:
                return int(container_port.container_port)
    raise LookupError(f"Service {namespace}/{name}: no container port named {target!r}")


class _Handler(socketserver.StreamRequestHandler):
    server: ServiceProxy

    def handle(self) -> None:
        request = self.rfile.readline(65536).decode("latin-1").split()
        while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
            pass  # headers
        if len(request) < 2 or request[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        host, _, port_text = request[1].rpartition(":")
        try:
            local_port = resolve(self.server.api, host, int(port_text))
            upstream = socket.create_connection(("127.0.0.1", local_port), timeout=10)
        except (LookupError, OSError, ValueError, client.ApiException) as exc:
            log.warning("CONNECT %s refused: %s", request[1], exc)
            self.wfile.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}".encode())
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        with upstream:
            _splice(self.connection, upstream)


def _splice(downstream: socket.socket, upstream: socket.socket) -> None:
    # Nothing is buffered past the headers: the apiserver waits for the 200 before its TLS ClientHello.
    upstream.settimeout(None)
    selector = selectors.DefaultSelector()
    selector.register(downstream, selectors.EVENT_READ, upstream)
    selector.register(upstream, selectors.EVENT_READ, downstream)
    try:
        while True:
            for key, _ in selector.select(timeout=300):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        selector.close()


class ServiceProxy(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, socket_path: Path, api: client.ApiClient) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        super().__init__(str(socket_path), _Handler)
        self.api = api
        self.socket_path = socket_path
        self._thread = threading.Thread(target=self.serve_forever, name="service-proxy", daemon=True)

    def start(self) -> ServiceProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
