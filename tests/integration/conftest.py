"""Fixtures for the integration tests: the PostgreSQL server that stands in for Redshift, fresh schemas in it,
DuckDB files, and the engines of the `spark` and `googlesql` tiers (one of each per session, shared by the tier's
module and the side-by-side comparison of test_engines_side_by_side.py).

`pg` reads the CDI_PG_* settings that `eval "$(bash hack/postgres.sh)"` exports; when they are not set it runs
hack/postgres.sh itself, so that a bare `pytest` works on a developer's machine too. The tests never skip.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import redshift_connector

from cdi_operator.api.models import RedshiftSpec

REPO = Path(__file__).resolve().parents[2]
ENV_KEYS = ("CDI_PG_HOST", "CDI_PG_PORT", "CDI_PG_USER", "CDI_PG_PASSWORD", "CDI_PG_DATABASE")
SECRET = ("pg-credentials", "password")


@dataclass(frozen=True)
class PgServer:
    """Where the test server listens; `user` is a superuser that sets tests up."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def connect(self, **overrides: Any) -> Any:
        settings: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "ssl": False,
        }
        settings.update(overrides)
        conn = redshift_connector.connect(**settings)
        conn.autocommit = True
        return conn

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        finally:
            conn.close()

    def spec(self, **overrides: Any) -> RedshiftSpec:
        fields: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "passwordSecretRef": {"name": SECRET[0], "key": SECRET[1]},
            "ssl": False,
        }
        fields.update(overrides)
        return RedshiftSpec.model_validate(fields)

    def secrets(self, password: str | None = None) -> dict[tuple[str, str], str]:
        return {SECRET: self.password if password is None else password}


def _settings_from_script() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "postgres.sh")], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            for pair in line.removeprefix("export ").split():
                key, _, value = pair.partition("=")
                values[key] = value
    return values


@pytest.fixture(scope="session")
def pg() -> PgServer:
    values = {key: os.environ[key] for key in ENV_KEYS if os.environ.get(key)}
    if len(values) < len(ENV_KEYS):
        values = _settings_from_script()
    return PgServer(
        host=values["CDI_PG_HOST"],
        port=int(values["CDI_PG_PORT"]),
        user=values["CDI_PG_USER"],
        password=values["CDI_PG_PASSWORD"],
        database=values["CDI_PG_DATABASE"],
    )


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PgSchema:
    """A schema of its own for one test, with helpers to fill it."""

    def __init__(self, server: PgServer, name: str) -> None:
        self.server = server
        self.name = name
        self.roles: list[str] = []

    def create_table(self, table: str, columns: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """`columns` is the column list as in CREATE TABLE; `table` is quoted as given."""
        qualified = f'"{self.name}"."{table}"'
        conn = self.server.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(f"CREATE TABLE {qualified} ({columns})")
            if rows:
                marks = ", ".join(["%s"] * len(rows[0]))
                cursor.executemany(f"INSERT INTO {qualified} VALUES ({marks})", [list(r) for r in rows])
        finally:
            conn.close()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.server.execute(sql, params)

    def role_without_select(self) -> tuple[str, str]:
        """A login role that may use the schema but read none of its tables: (name, password)."""
        role, password = f"cdi_reader_{uuid.uuid4().hex[:8]}", "reader-secret-" + uuid.uuid4().hex[:6]
        self.execute(f"CREATE ROLE {role} LOGIN PASSWORD {sql_literal(password)}")
        self.execute(f'GRANT USAGE ON SCHEMA "{self.name}" TO {role}')
        self.roles.append(role)
        return role, password


@pytest.fixture
def pg_schema(pg: PgServer) -> Iterator[PgSchema]:
    schema = PgSchema(pg, f"t_{uuid.uuid4().hex[:12]}")
    pg.execute(f'CREATE SCHEMA "{schema.name}"')
    yield schema
    pg.execute(f'DROP SCHEMA "{schema.name}" CASCADE')
    for role in schema.roles:
        pg.execute(f"DROP ROLE IF EXISTS {role}")


class DuckDBFile:
    """A DuckDB database file for one test, with the same helpers as PgSchema (tables in schema `main`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = "main"

    def create_table(self, table: str, columns: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        qualified = '"main"."' + table.replace('"', '""') + '"'
        with duckdb.connect(str(self.path)) as con:
            con.execute(f"CREATE TABLE {qualified} ({columns})")
            if rows:
                marks = ", ".join(["?"] * len(rows[0]))
                con.executemany(f"INSERT INTO {qualified} VALUES ({marks})", [list(r) for r in rows])

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.path)) as con:
            result = con.execute(sql, params)
            return result.fetchall() if result.description else []


@pytest.fixture
def duckdb_path(tmp_path: Path) -> Path:
    """A fresh DuckDB file (it exists, with no tables)."""
    path = tmp_path / "source.duckdb"
    duckdb.connect(str(path)).close()
    return path


@pytest.fixture
def duckdb_file(duckdb_path: Path) -> DuckDBFile:
    return DuckDBFile(duckdb_path)


# The runner's tests (sources.py) build on these: a `Source` per warehouse, as its manifest needs it.


@pytest.fixture
def pg_source(pg: PgServer, pg_schema: PgSchema) -> Any:
    from sources import Source

    settings = {
        "host": pg.host,
        "port": pg.port,
        "user": pg.user,
        "password": pg.password,
        "database": pg.database,
        "schema": pg_schema.name,
    }
    return Source("postgres", settings)


@pytest.fixture
def duckdb_source(duckdb_path: Path) -> Any:
    from sources import Source

    return Source("duckdb", {"path": str(duckdb_path), "schema": "main"})


@dataclass(frozen=True)
class SshBastion:
    """A real OpenSSH server on loopback that forwards TCP, like the bastion host of a private Redshift cluster."""

    host: str
    port: int
    user: str
    private_key: str  # the client's key, as a Secret would hold it
    host_key: str  # the server's public host key line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def ssh_bastion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBastion]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise RuntimeError("sshd is missing: apt-get install -y openssh-server (.ci/run installs it)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = _free_port()
    (home / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nPidFile none\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = (home / "sshd.log").open("w")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(home / "sshd_config")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(home / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield SshBastion(
            host="127.0.0.1",
            port=port,
            user=getpass.getuser(),
            private_key=(home / "client_key").read_text(),
            host_key=(home / "host_key.pub").read_text().strip(),
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


# --- the engine tiers: one Spark Thrift server and one BigQuery emulator per session -------------------------------

SPARK_TOKEN = "dapi-spark-token"
SPARK_HTTP_PATH = "/sql/1.0/warehouses/spark"
BIGQUERY_PROJECT = "cdi-test-project"


@pytest.fixture(scope="session")
def spark_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Spark's Thrift server behind databricks_proxy.py (started on first use: about 25 s, 0.8 GB)."""
    from databricks_proxy import DatabricksProxy
    from spark_server import SparkThriftServer

    with (
        SparkThriftServer(tmp_path_factory.mktemp("spark")) as spark,
        DatabricksProxy("127.0.0.1", spark.port, SPARK_TOKEN) as proxy,
    ):
        yield proxy


@pytest.fixture(scope="session")
def spark_admin(spark_proxy: Any) -> Iterator[Any]:
    """A cursor of the tests' own session (setup statements), through the proxy like the adapter's."""
    conn = spark_proxy.connect(SPARK_HTTP_PATH)
    with conn.cursor() as cursor:
        yield cursor
    conn.close()


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """goccy's bigquery-emulator on loopback (starts in under a second; built once per machine)."""
    from bigquery_emulator import BigQueryEmulator

    with BigQueryEmulator(BIGQUERY_PROJECT, tmp_path_factory.mktemp("bq") / "emulator.log") as server:
        yield server
