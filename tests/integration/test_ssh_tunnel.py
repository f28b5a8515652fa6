"""Redshift through an SSH bastion (`spec.redshift.sshTunnel`), against a real OpenSSH server on loopback."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import PgSchema, PgServer, SshBastion

from cdi_operator import warehouses
from cdi_operator.api.models import WarehouseCredentialSpec
from cdi_operator.warehouses.base import FailureReason, ReadWindow, WarehouseError

pytestmark = pytest.mark.postgres
KEY_REF = ("bastion", "private-key")


def tunnel_spec(bastion: SshBastion, **overrides: Any) -> dict[str, Any]:
    spec = {
        "host": bastion.host,
        "port": bastion.port,
        "user": bastion.user,
        "privateKeySecretRef": {"name": KEY_REF[0], "key": KEY_REF[1]},
    }
    return {**spec, **overrides}


def connect(pg: PgServer, tunnel: dict[str, Any], key: str) -> warehouses.Warehouse:
    spec = pg.spec(sshTunnel=tunnel)
    credential = WarehouseCredentialSpec(type="redshift", redshift=spec)
    return warehouses.connect(credential, {**pg.secrets(), KEY_REF: key})


def test_reads_through_the_bastion(pg: PgServer, pg_schema: PgSchema, ssh_bastion: SshBastion) -> None:
    pg_schema.create_table(
        "users",
        "updated_at TIMESTAMP, external_id VARCHAR(64), payload VARCHAR(256)",
        [
            (datetime(2026, 1, 1, 12), "u-1", "{}"),
        ],
    )
    warehouse = connect(pg, tunnel_spec(ssh_bastion, hostKey=ssh_bastion.host_key), ssh_bastion.private_key)
    try:
        table = (pg.database, pg_schema.name, "users")
        assert [c.name for c in warehouse.describe(table).columns] == ["updated_at", "external_id", "payload"]
        window = ReadWindow(since=None, until=datetime(2027, 1, 1, tzinfo=UTC))
        chunks = list(warehouse.read_changes(table, ["updated_at", "external_id"], "updated_at", window, 100))
        assert chunks == [[(datetime(2026, 1, 1, 12, tzinfo=UTC), "u-1")]]
    finally:
        warehouse.close()


def test_a_bastion_with_another_host_key_is_refused(pg: PgServer, ssh_bastion: SshBastion, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().strip()

    with pytest.raises(WarehouseError) as caught:
        connect(pg, tunnel_spec(ssh_bastion, hostKey=other), ssh_bastion.private_key)

    assert caught.value.reason is FailureReason.AUTH_FAILED
    assert "hostKey" in caught.value.message


def test_a_key_the_bastion_does_not_know_is_auth_failed(pg: PgServer, ssh_bastion: SshBastion, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)

    with pytest.raises(WarehouseError) as caught:
        connect(pg, tunnel_spec(ssh_bastion), (tmp_path / "stranger").read_text())

    assert caught.value.reason is FailureReason.AUTH_FAILED
    assert "authorized_keys" in caught.value.message


def test_a_malformed_key_names_the_secret(pg: PgServer, ssh_bastion: SshBastion) -> None:
    with pytest.raises(WarehouseError) as caught:
        connect(pg, tunnel_spec(ssh_bastion), "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")

    assert caught.value.reason is FailureReason.AUTH_FAILED
    assert "privateKeySecretRef" in caught.value.message


def test_an_unreachable_bastion(pg: PgServer, ssh_bastion: SshBastion) -> None:
    with pytest.raises(WarehouseError) as caught:
        connect(pg, tunnel_spec(ssh_bastion, port=1), ssh_bastion.private_key)

    assert caught.value.reason is FailureReason.UNREACHABLE
    assert "127.0.0.1:1" in caught.value.message
