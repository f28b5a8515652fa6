"""The PostgreSQL server of hack/postgres.sh (the Redshift stand-in), as the e2e tests and benchmarks reach it."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import redshift_connector

from .controlplane import REPO_ROOT

PG_KEYS = ("CDI_PG_HOST", "CDI_PG_PORT", "CDI_PG_USER", "CDI_PG_PASSWORD", "CDI_PG_DATABASE")


def pg_settings() -> dict[str, str]:
    """$CDI_PG_* when all are set, else what hack/postgres.sh prints after starting the server."""
    values = {key: os.environ[key] for key in PG_KEYS if os.environ.get(key)}
    if len(values) == len(PG_KEYS):
        return values
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "postgres.sh")], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    for line in out.splitlines():
        if line.startswith("export "):
            for pair in line.removeprefix("export ").split():
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def connect(pg: dict[str, str]) -> Any:
    """An autocommit connection through redshift_connector, as the Redshift reader makes."""
    conn = redshift_connector.connect(
        host=pg["CDI_PG_HOST"],
        port=int(pg["CDI_PG_PORT"]),
        user=pg["CDI_PG_USER"],
        password=pg["CDI_PG_PASSWORD"],
        database=pg["CDI_PG_DATABASE"],
        ssl=False,
    )
    conn.autocommit = True
    return conn


def sql(pg: dict[str, str], statement: str, rows: list[tuple[Any, ...]] | None = None) -> None:
    """Runs `statement` once, or once per row of `rows`."""
    conn = connect(pg)
    try:
        cursor = conn.cursor()
        if rows:
            cursor.executemany(statement, [list(r) for r in rows])
        else:
            cursor.execute(statement)
    finally:
        conn.close()


def redshift_credential(pg: dict[str, str], secret: str, name: str = "wh", user: str | None = None) -> dict[str, Any]:
    """A WarehouseCredential of type redshift for this server, its password in the Secret `secret` (key password)."""
    return {
        "apiVersion": "cdi.ingest.dev/v1alpha1",
        "kind": "WarehouseCredential",
        "metadata": {"name": name},
        "spec": {
            "type": "redshift",
            "redshift": {
                "host": pg["CDI_PG_HOST"],
                "port": int(pg["CDI_PG_PORT"]),
                "database": pg["CDI_PG_DATABASE"],
                "user": user or pg["CDI_PG_USER"],
                "ssl": False,
                "passwordSecretRef": {"name": secret, "key": "password"},
            },
        },
    }
