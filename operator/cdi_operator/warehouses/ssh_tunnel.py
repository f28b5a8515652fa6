"""An SSH tunnel through a bastion host, for warehouses that are not reachable directly (Redshift's `sshTunnel`).

It listens on a free loopback port and forwards each connection over one SSH session (`direct-tcpip`) to the
warehouse, so the warehouse's own client connects to 127.0.0.1 as if it were the warehouse.
"""

from __future__ import annotations

import base64
import io
import logging
import select
import socket
import threading
from contextlib import suppress

import paramiko

from cdi_operator.api.models import SshTunnelSpec
from cdi_operator.warehouses.base import FailureReason, WarehouseError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 20
_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def load_private_key(pem: str) -> paramiko.PKey:
    for key_type in _KEY_TYPES:
        with suppress(paramiko.SSHException, ValueError):
            return key_type.from_private_key(io.StringIO(pem))
    raise WarehouseError(
        FailureReason.AUTH_FAILED,
        "spec.redshift.sshTunnel.privateKeySecretRef does not hold an unencrypted OpenSSH or PEM private key "
        "(ed25519, ECDSA or RSA); store the key file's whole text in the Secret",
    )


class _ExpectedHostKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    """Accept the bastion only if it shows the host key the user pinned."""

    def __init__(self, expected: str | None) -> None:
        self.expected = expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        shown = f"{key.get_name()} {base64.b64encode(key.asbytes()).decode()}"
        if self.expected is None:
            log.warning(
                "sshTunnel: accepting the host key of %s without checking it (%s); pin it in sshTunnel.hostKey",
                hostname,
                shown,
            )
            return
        if " ".join(self.expected.split()[:2]) != shown:
            raise WarehouseError(
                FailureReason.AUTH_FAILED,
                f"the SSH bastion {hostname} showed host key {shown}, not the one in sshTunnel.hostKey; "
                "if the bastion's key was changed on purpose, update hostKey",
            )


class SshTunnel:
    """A running tunnel; `local_port` on 127.0.0.1 leads to (remote_host, remote_port) through the bastion."""

    def __init__(self, spec: SshTunnelSpec, private_key_pem: str, remote_host: str, remote_port: int) -> None:
        self.remote = (remote_host, remote_port)
        self._client = paramiko.SSHClient()
        self._client.set_missing_host_key_policy(_ExpectedHostKey(spec.host_key))
        try:
            self._client.connect(
                spec.host,
                port=spec.port,
                username=spec.user,
                pkey=load_private_key(private_key_pem),
                timeout=CONNECT_TIMEOUT_SECONDS,
                banner_timeout=CONNECT_TIMEOUT_SECONDS,
                auth_timeout=CONNECT_TIMEOUT_SECONDS,
                allow_agent=False,
                look_for_keys=False,
            )
        except WarehouseError:
            self._client.close()
            raise
        except paramiko.AuthenticationException:
            self._client.close()
            raise WarehouseError(
                FailureReason.AUTH_FAILED,
                f"the SSH bastion {spec.host}:{spec.port} refused user {spec.user!r} with the key in "
                "sshTunnel.privateKeySecretRef; add its public key to that user's authorized_keys",
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            self._client.close()
            raise WarehouseError(
                FailureReason.UNREACHABLE,
                f"cannot reach the SSH bastion {spec.host}:{spec.port} ({exc}); check sshTunnel.host and port and "
                "that the bastion accepts connections from the cluster",
            ) from None
        transport = self._client.get_transport()
        assert transport is not None  # connect() succeeded
        self._transport = transport
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="cdi-ssh-tunnel", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, peer = self._listener.accept()
            except OSError:
                return
            try:
                channel = self._transport.open_channel("direct-tcpip", self.remote, peer)
            except (paramiko.SSHException, OSError) as exc:
                log.warning("sshTunnel: the bastion could not open a channel to %s:%d: %s", *self.remote, exc)
                local.close()
                continue
            threading.Thread(target=_pump, args=(local, channel), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.close()
        self._client.close()


def _pump(local: socket.socket, channel: paramiko.Channel) -> None:
    try:
        while True:
            readable, _, _ = select.select([local, channel], [], [])
            if local in readable:
                data = local.recv(65536)
                if not data:
                    return
                channel.sendall(data)
            if channel in readable:
                data = channel.recv(65536)
                if not data:
                    return
                local.sendall(data)
    except OSError:
        return
    finally:
        channel.close()
        local.close()
