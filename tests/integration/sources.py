"""Source tables for the runner's integration tests, in the real PostgreSQL server, an embedded DuckDB file or the
BigQuery stand-in (bigquery_standin.py), with the manifest a user would write for them."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import redshift_connector
from harness.containerd import Containerd, image_archive

from cdi_operator import cli
from cdi_operator.api.models import CdiIntegrationSpec

BRAZE_KEY = "test-rest-api-key"
T0 = datetime(2026, 3, 1, 12, 0, 0)
ATTRIBUTE_COLUMNS = (
    "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR(64), ALIAS_NAME VARCHAR(64), ALIAS_LABEL VARCHAR(64), "
    "BRAZE_ID VARCHAR(64), EMAIL VARCHAR(128), PHONE VARCHAR(32), PAYLOAD VARCHAR(65535)"
)


def at(seconds: float) -> datetime:
    """A naive UTC timestamp `seconds` after the tests' epoch, as a TIMESTAMP column holds it."""
    return T0 + timedelta(seconds=seconds)


def user_row(seconds: float, external_id: str, payload: dict[str, Any] | str) -> tuple[Any, ...]:
    """A row of ATTRIBUTE_COLUMNS identified by EXTERNAL_ID."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return (at(seconds), external_id, None, None, None, None, None, text)


SECRET_AND_CREDENTIAL = {
    "postgres": """\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: "{password}", api-key: {api_key}}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata: {{name: wh}}
spec:
  type: redshift
  redshift: {{host: "{host}", port: {port}, database: {database}, user: {user}, ssl: false,
             passwordSecretRef: {{name: creds, key: password}}}}
""",
    "databricks": """\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{token: "{token}", api-key: {api_key}}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata: {{name: wh}}
spec:
  type: databricks
  databricks: {{serverHostname: "127.0.0.1", httpPath: "{http_path}", catalog: {catalog},
               accessTokenSecretRef: {{name: creds, key: token}}}}
""",
    "duckdb": """\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{api-key: {api_key}}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata: {{name: wh}}
spec:
  type: duckdb
  duckdb: {{path: "{path}"}}
""",
    # `key_json` is the service-account key as a YAML (JSON) string literal; the stand-in's URL comes from
    # CDI_BIGQUERY_API_ENDPOINT, which the test sets.
    "bigquery": """\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{api-key: {api_key}, key.json: {key_json}}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata: {{name: wh}}
spec:
  type: bigquery
  bigquery: {{project: {project}, serviceAccountKeySecretRef: {{name: creds, key: key.json}}}}
""",
}

# The Snowflake stand-in (snowflake_standin.py) is reached through CDI_SNOWFLAKE_ENDPOINT, which the test sets;
# `private_key` is the PEM as a YAML (JSON) string literal.
SECRET_AND_CREDENTIAL["snowflake"] = """\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{private-key: {private_key}, api-key: {api_key}}}
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: WarehouseCredential
metadata: {{name: wh}}
spec:
  type: snowflake
  snowflake: {{account: {account}, user: {user}, role: {role}, warehouse: {warehouse},
              privateKeySecretRef: {{name: creds, key: private-key}}}}
"""

INTEGRATION = """\
---
apiVersion: cdi.ingest.dev/v1alpha1
kind: CdiIntegration
metadata: {{name: {name}}}
spec:
  credentialRef: {{name: wh}}
  source: {source}
  dataType: {data_type}
  schedule: "0 * * * *"
  braze:
    restEndpoint: {endpoint}
    apiKeySecretRef: {{name: creds, key: {key_name}}}
    maxInFlight: {max_in_flight}
  sync: {{settleSeconds: {settle}, checkpointSeconds: {checkpoint}, chunkRows: {chunk_rows}}}
"""


@dataclass
class Source:
    """One warehouse (PostgreSQL through redshift_connector, or DuckDB) holding the test's tables."""

    kind: str
    settings: dict[str, Any]

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        if self.kind == "snowflake":  # a session in the test's database of the Snowflake stand-in
            import snowflake.connector

            sf = snowflake.connector.connect(
                account=self.settings["account"],
                user="ADMIN",
                password="unused",  # the stand-in ignores credentials
                database=self.settings["database"],
                schema=self.schema,
                host="127.0.0.1",
                port=int(self.settings["port"]),
                protocol="http",
                paramstyle="qmark",
                platform_detection_timeout_seconds=0.0,
                session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False, "TIMEZONE": "UTC"},
            )
            try:
                yield sf.cursor()
            finally:
                sf.close()
            return
        if self.kind == "databricks":  # the DuckDB database behind the Databricks stand-in, in its catalog
            yield self.settings["standin"].cursor()
            return
        if self.kind == "bigquery":  # the DuckDB database behind the BigQuery stand-in; schemas are datasets
            with self.settings["standin"].cursor() as con:
                yield con
            return
        if self.kind == "duckdb":
            con = duckdb.connect(self.settings["path"])
            try:
                yield con
            finally:
                con.close()
            return
        con = redshift_connector.connect(
            host=self.settings["host"],
            port=int(self.settings["port"]),
            user=self.settings["user"],
            password=self.settings["password"],
            database=self.settings["database"],
            ssl=False,
        )
        con.autocommit = True
        try:
            yield con.cursor()
        finally:
            con.close()

    @property
    def schema(self) -> str:
        return str(self.settings["schema"])

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._cursor() as cur:
            cur.execute(sql, params) if params is not None else cur.execute(sql)

    def create_table(self, table: str, columns: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        self.execute(f"CREATE TABLE {self.schema}.{table} ({columns})")
        self.insert(table, rows)

    def insert(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        marks = ", ".join(["%s" if self.kind == "postgres" else "?"] * len(rows[0]))
        with self._cursor() as cur:
            cur.executemany(f"INSERT INTO {self.schema}.{table} VALUES ({marks})", [list(r) for r in rows])

    def source_yaml(self, table: str) -> str:
        if self.kind == "databricks":
            return f"{{catalog: {self.settings['catalog']}, schema: {self.schema}, table: {table}}}"
        if self.kind == "bigquery":
            return f"{{project: {self.settings['project']}, dataset: {self.schema}, table: {table}}}"
        if self.kind == "duckdb":
            return f"{{schema: {self.schema}, table: {table}}}"
        return f"{{database: {self.settings['database']}, schema: {self.schema}, table: {table}}}"

    def manifest(
        self,
        path: Path,
        table: str,
        data_type: str,
        endpoint: str,
        *,
        name: str = "it",
        settle: int = 0,
        checkpoint: float = 0,
        max_in_flight: int = 4,
        chunk_rows: int = 500,
        key_name: str = "api-key",
    ) -> Path:
        text = SECRET_AND_CREDENTIAL[self.kind].format(api_key=BRAZE_KEY, **self.settings) + INTEGRATION.format(
            name=name,
            source=self.source_yaml(table),
            data_type=data_type,
            endpoint=endpoint,
            settle=settle,
            checkpoint=checkpoint,
            max_in_flight=max_in_flight,
            chunk_rows=chunk_rows,
            key_name=key_name,
        )
        path.write_text(text)
        return path


def integration_spec(source: dict[str, str]) -> CdiIntegrationSpec:
    """A customAttributes integration of credential `wh` on `source` (its spec.source), for a connection test."""
    return CdiIntegrationSpec.model_validate(
        {"credentialRef": {"name": "wh"}, "source": source, "dataType": "customAttributes", "schedule": "0 * * * *"}
    )


@dataclass
class CdiResult:
    exit_code: int
    record: dict[str, Any]
    stdout: str


def run_cdi(*args: str) -> CdiResult:
    """`cdi …` in this process, as a user runs it; the last stdout line parsed when it is JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(args))
    text = out.getvalue()
    lines = text.strip().splitlines()
    record: dict[str, Any] = {}
    if lines and lines[-1].startswith("{"):
        record = json.loads(lines[-1])
    return CdiResult(code, record, text)


def sync(manifest: Path, state: Path, *extra: str) -> CdiResult:
    return run_cdi("sync", "-f", str(manifest), "--state", str(state), "--output", "json", *extra)


IN_IMAGE_ENV = "CDI_CONTRACT_IN_IMAGE"  # 1: the contract syncs run in the image (.ci/run does it once)
_runtime: list[Containerd] = []


def sync_in_image(manifest: Path, state: Path) -> CdiResult:
    """`cdi sync` in the project's image as the chart runs it (uid 10001, read-only root, only /tmp writable), on
    the host's network to reach the stand-ins on loopback; the stand-ins' endpoint settings ($CDI_*_ENDPOINT) are
    passed on. The manifest and the state file go through a directory of their own that uid 10001 may write."""
    if not _runtime:
        runtime = Containerd(Path(tempfile.mkdtemp(prefix="cdi-contract-containerd-"))).start()
        atexit.register(runtime.stop)
        runtime.import_image(image_archive())
        _runtime.append(runtime)
    work = Path(tempfile.mkdtemp(prefix="cdi-contract-"))
    work.chmod(0o777)
    shutil.copy(manifest, work / "manifest.yaml")
    if state.exists():
        shutil.copy(state, work / "state.json")
    endpoints = {k: v for k, v in os.environ.items() if k.startswith("CDI_") and k.endswith("_ENDPOINT")}
    args = ["cdi", "sync", "-f", f"{work}/manifest.yaml", "--state", f"{work}/state.json", "--output", "json"]
    ran = _runtime[0].run(
        args, read_only=True, tmpfs=["/tmp"], writable_mounts={str(work): str(work)}, env=endpoints, host_network=True
    )
    if (work / "state.json").exists():
        shutil.copy(work / "state.json", state)
    shutil.rmtree(work, ignore_errors=True)
    lines = ran.stdout.strip().splitlines()
    record: dict[str, Any] = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return CdiResult(ran.returncode, record, ran.output)
