"""The Snowflake stand-in for the integration tests and the benchmark: fakesnow's HTTP server (DuckDB underneath) in
a process of its own on loopback, which the official `snowflake-connector-python` talks to over HTTP exactly as it
talks to Snowflake (login request, query requests, Arrow result sets).

The server keeps every database in memory, shared by all sessions; each test makes a database of its own.
In front of it, snowflake_keygate.py refuses a key-pair login as Snowflake does (error 390144) unless the key is
registered for the user with `ALTER USER … SET RSA_PUBLIC_KEY[_2]`; `running_standin()` registers the key of
`private_key_pem()` for USER unless told not to. Password logins (the tests' setup sessions) are not checked.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from processes import free_port, stop

from cdi_operator.api.models import SnowflakeSpec

SECRET = ("snowflake-key", "private-key")
ACCOUNT, USER, ROLE, WAREHOUSE = "myorg-standin", "CDI_RUNNER", "CDI_READER", "CDI_WH"


@cache
def private_key_pem() -> str:
    """An unencrypted PKCS#8 RSA key, as the operator generates it (made once per test process)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass
class SnowflakeStandIn:
    """A running fakesnow server; `endpoint` is what CDI_SNOWFLAKE_ENDPOINT must hold to reach it."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    databases: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> Any:
        """A session for setting tests up (the stand-in ignores the credentials)."""
        return snowflake.connector.connect(
            account=ACCOUNT,
            user="ADMIN",
            password="unused",
            host="127.0.0.1",
            port=self.port,
            protocol="http",
            paramstyle="qmark",
            platform_detection_timeout_seconds=0.0,
            session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False, "TIMEZONE": "UTC"},
        )

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.connect()) as con:
            cursor = con.cursor()
            cursor.execute(sql, params)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with contextlib.closing(self.connect()) as con:
            cursor = con.cursor()
            for row in rows:  # one statement per row: the stand-in runs array bindings row by row anyway
                cursor.execute(sql, list(row))

    def register_key(self, pem: str, slot: int = 1, user: str = USER) -> None:
        """Run the ALTER USER that registers `pem`'s public key in `slot`, as the user's admin would."""
        public = serialization.load_pem_private_key(pem.encode(), None).public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        column = "RSA_PUBLIC_KEY" if slot == 1 else "RSA_PUBLIC_KEY_2"
        self.execute(f"ALTER USER \"{user}\" SET {column}='{base64.b64encode(der).decode()}'")

    def new_database(self, prefix: str = "CDI_T") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10].upper()}"
        self.execute(f'CREATE DATABASE "{name}"')
        self.execute(f'CREATE SCHEMA "{name}"."PUBLIC"')
        self.databases.append(name)
        return name

    def spec(self, **overrides: Any) -> SnowflakeSpec:
        fields: dict[str, Any] = {
            "account": ACCOUNT,
            "user": USER,
            "role": ROLE,
            "warehouse": WAREHOUSE,
            "privateKeySecretRef": {"name": SECRET[0], "key": SECRET[1]},
        }
        fields.update(overrides)
        return SnowflakeSpec.model_validate(fields)

    def secrets(self, pem: str | None = None) -> dict[tuple[str, str], str]:
        return {SECRET: private_key_pem() if pem is None else pem}

    def stop(self) -> None:
        stop(self.process)


@contextlib.contextmanager
def running_standin(timeout: float = 60, register_default_key: bool = True) -> Iterator[SnowflakeStandIn]:
    """Start fakesnow's server behind the key gate on a free loopback port, wait until it serves (and register
    `private_key_pem()` for USER), and stop it afterwards."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="fakesnow-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("snowflake_keygate.py")), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    standin = SnowflakeStandIn(port, process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"fakesnow exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fakesnow did not listen on {port}: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        if register_default_key:
            standin.register_key(private_key_pem())
        yield standin
    finally:
        standin.stop()
        log.unlink(missing_ok=True)
