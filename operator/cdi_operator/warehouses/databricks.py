"""Databricks SQL warehouses through the official `databricks-sql-connector` (Thrift over HTTPS, personal access token).

Tables are named `catalog`.`schema`.`table` with backtick quoting; a source without a catalog uses the credential's
`catalog`, else the warehouse's default catalog. Window bounds are the connector's native named parameters
(`:since`, `:until`, bound server-side, never text in the SQL). Results stream with `fetchmany_arrow` in chunks of at
most `MAX_FETCH_ROWS`; a large result may come as cloud-fetch links, which the connector downloads itself.

UPDATED_AT may be TIMESTAMP (converted to UTC), TIMESTAMP_NTZ (taken as UTC: the session zone is set to UTC, so the
bounds compare as UTC too) or DATE. PAYLOAD may be STRING (JSON text, passed on as text), STRUCT (a dict) or MAP (the
connector gives a list of key/value pairs; it becomes a dict), nested values included.

A classic SQL warehouse that is stopped starts on the first request and answers HTTP 503 (TEMPORARILY_UNAVAILABLE)
for minutes; the connector retries those. The adapter bounds that wait by `WARM_UP_WAIT_SECONDS` and then reports
WarmingUp, which the runner treats as "try again at the next sync", not as a broken credential.

Test hook: when the environment variable `CDI_DATABRICKS_ENDPOINT` is set (e.g. `http://127.0.0.1:8080`), the
connector is pointed at `<endpoint><httpPath>` instead of `https://<serverHostname>:443<httpPath>`, through the
connector's own `_connection_uri` option. It exists for the loopback stand-in in tests/integration and is never set
in the chart.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from databricks import sql as dbsql
from databricks.sql.exc import Error as DriverError
from databricks.sql.exc import MaxRetryDurationError, RequestError

from cdi_operator.api.models import DatabricksSpec
from cdi_operator.warehouses import secret_value
from cdi_operator.warehouses.base import Column, FailureReason, WarehouseError
from cdi_operator.warehouses.sql import Dialect, Select, SqlWarehouse, Table, as_utc, failure

ENDPOINT_ENV = "CDI_DATABRICKS_ENDPOINT"
HTTPS_PORT = 443
CONNECT_TIMEOUT_SECONDS = 30.0
# How long a starting warehouse (HTTP 503/429) is waited for before the sync or connection test reports WarmingUp.
# The connector allows 1..86400; a classic or pro warehouse starts in 2-5 minutes, a serverless one in seconds:
# seven minutes cover the slowest start with margin. The operator's connection-test timeout is longer still.
WARM_UP_WAIT_SECONDS = 420.0
# Pause between retries while the warehouse starts (the connector waits at least this long; its floor is 5 s).
WARM_UP_POLL_SECONDS = 10.0
SOCKET_TIMEOUT_SECONDS = 900.0
MAX_FETCH_ROWS = 10_000
USER_AGENT = "cdi-operator"

_TIMESTAMP_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "DATE"})
_ERROR_CLASS = re.compile(r"\[([A-Z_]+)(?:\.[A-Z_]+)*\]")


def connect(settings: DatabricksSpec, secrets: Mapping[tuple[str, str], str]) -> DatabricksWarehouse:
    """Open a session; raises WarehouseError with the reason and what to do, never with the token."""
    token = secret_value(secrets, settings.access_token_secret_ref)
    endpoint = os.environ.get(ENDPOINT_ENV, "").rstrip("/")
    options: dict[str, Any] = {}
    host, port = settings.server_hostname, HTTPS_PORT
    if endpoint:
        options["_connection_uri"] = endpoint + settings.http_path
        parsed = urlsplit(endpoint)
        host, port = parsed.hostname or host, parsed.port or port
    _probe_tcp(settings, host, port)
    try:
        conn = dbsql.connect(
            server_hostname=settings.server_hostname,
            http_path=settings.http_path,
            access_token=token,
            user_agent_entry=USER_AGENT,
            enable_telemetry=False,
            use_inline_params=False,
            _retry_stop_after_attempts_duration=WARM_UP_WAIT_SECONDS,
            _retry_delay_max=WARM_UP_POLL_SECONDS,
            _socket_timeout=SOCKET_TIMEOUT_SECONDS,
            **options,
        )
    except (DriverError, OSError) as exc:
        raise _failure(exc, settings, token) from None
    warehouse = DatabricksWarehouse(conn, settings, token)
    warehouse.run("SET TIME ZONE 'UTC'")  # TIMESTAMP_NTZ columns then compare with the bounds as UTC
    return warehouse


def _probe_tcp(settings: DatabricksSpec, host: str, port: int) -> None:
    """Fail fast and precisely when the host cannot be reached: the connector retries refused connections like a
    starting warehouse, for up to WARM_UP_WAIT_SECONDS, and would then report the wrong reason."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except socket.gaierror:
        raise WarehouseError(
            FailureReason.UNREACHABLE,
            f"cannot resolve {settings.server_hostname!r}: check spec.databricks.serverHostname (the workspace "
            f"host, e.g. dbc-1234abcd-5678.cloud.databricks.com, without https://)",
        ) from None
    except OSError as exc:
        raise WarehouseError(
            FailureReason.UNREACHABLE,
            f"cannot reach {host}:{port} ({exc.strerror or type(exc).__name__}): check "
            f"spec.databricks.serverHostname and that the cluster's egress (proxy, firewall, IP access list) "
            f"admits the runner",
        ) from None


def quote_ident(name: str) -> str:
    """An identifier quoted by Databricks SQL rules: in backticks, inner backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def _bind(name: str, kind: str, value: datetime) -> tuple[str, datetime]:
    """A named parameter: the session zone is UTC, so TIMESTAMP_NTZ columns compare with it as UTC too."""
    del kind
    return name, value.astimezone(UTC)


DIALECT = Dialect(
    quote=quote_ident,
    placeholder=":{name}",
    bind=_bind,
    timestamp_kind=lambda type_name: type_name if type_name.split("(")[0] in _TIMESTAMP_TYPES else None,
    updated_at_types="TIMESTAMP or TIMESTAMP_NTZ (UTC)",
    fetch_rows=MAX_FETCH_ROWS,
)


class DatabricksWarehouse(SqlWarehouse):
    dialect = DIALECT

    def __init__(self, conn: Any, settings: DatabricksSpec, token: str) -> None:
        super().__init__()
        self._conn = conn
        self._settings = settings
        self._token = token

    def close(self) -> None:
        with contextlib.suppress(DriverError, OSError):  # a broken session has nothing left to save
            self._conn.close()

    def run(self, sql: str, table: Table | None = None) -> list[Any]:
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall()) if cursor.description else []
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._token, table) from None

    # --- the adapter's own part -------------------------------------------------------------------------------

    def _parts(self, table: Sequence[str]) -> tuple[str, ...]:
        parts = tuple(table)
        if len(parts) == 2 and self._settings.catalog:
            parts = (self._settings.catalog, *parts)
        if not 2 <= len(parts) <= 3:
            raise WarehouseError(
                FailureReason.TABLE_MISSING,
                f"name the table as catalog/schema/table (catalog optional), not {'.'.join(parts)!r}",
            )
        return parts

    def _resolve(self, table: Sequence[str]) -> Table:
        """The columns from a `LIMIT 0` query: works for views too, and proves SELECT is granted."""
        probe = Table(self._parts(table))
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(f"SELECT * FROM {DIALECT.name(probe.parts)} LIMIT 0")
                description = cursor.description or []
        except (DriverError, OSError) as exc:
            failure = _failure(exc, self._settings, self._token, probe)
            if failure.reason is FailureReason.TABLE_MISSING:
                self._check_schema(probe)  # Databricks says TABLE_OR_VIEW_NOT_FOUND for a missing schema too
            raise failure from None
        return Table(probe.parts, tuple(Column(str(d[0]), str(d[1]).upper()) for d in description))

    def _check_schema(self, table: Table) -> None:
        self.run(f"DESCRIBE SCHEMA {DIALECT.name(table.parts[:-1])}", table=table)

    def _fetch(self, table: Table, select: Select) -> list[tuple[Any, ...]]:
        return [row for chunk in self._stream(table, select, MAX_FETCH_ROWS) for row in chunk]

    def _stream(self, table: Table, select: Select, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        ts_index = select.updated_at
        payload_index = next((i for i, c in enumerate(select.columns) if c.upper() == "PAYLOAD"), None)
        try:
            with self._conn.cursor(arraysize=fetch_rows) as cursor:
                cursor.execute(select.sql, dict(select.params) if select.params else None)
                while True:
                    arrow = cursor.fetchmany_arrow(fetch_rows)
                    if arrow.num_rows == 0:
                        break
                    values = [column.to_pylist() for column in arrow.columns]
                    if ts_index is not None:
                        values[ts_index] = [as_utc(v) for v in values[ts_index]]
                    if payload_index is not None:
                        values[payload_index] = [_payload(v) for v in values[payload_index]]
                    yield list(zip(*values, strict=True))
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._token, table) from None


def _payload(value: Any) -> Any:
    """STRING stays JSON text; STRUCT and MAP become dicts, with their nested values made JSON-ready."""
    if value is None or isinstance(value, str):
        return value
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):  # an Arrow map
            return {str(k): _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


# --- errors -------------------------------------------------------------------------------------------------


def _failure(exc: BaseException, settings: DatabricksSpec, token: str, table: Table | None = None) -> WarehouseError:
    reason, advice = _classify(exc, settings, table)
    return failure(reason, advice, f"{settings.server_hostname}{settings.http_path}", _detail(exc), [token])


def _detail(exc: BaseException) -> str:
    context = getattr(exc, "context", None) or {}
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else str(exc)
    if isinstance(context, dict) and context.get("http-code"):
        text = f"HTTP {context['http-code']} {context.get('error-message') or ''}".strip(" :")
    text = " ".join(text.split())
    return text[:400] + ("…" if len(text) > 400 else "")


def _http_code(exc: BaseException) -> int | None:
    context = getattr(exc, "context", None)
    code = context.get("http-code") if isinstance(context, dict) else None
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _classify(exc: BaseException, settings: DatabricksSpec, table: Table | None) -> tuple[FailureReason, str]:
    name = table.display if table else "the table"
    ref = settings.access_token_secret_ref
    token_advice = (
        f"check the personal access token (or service principal token) in Secret {ref.name!r} key {ref.key!r}: "
        f"it may be mistyped, expired or revoked"
    )
    code = _http_code(exc)
    text = str(exc)
    error_class = _ERROR_CLASS.search(text)
    kind = error_class.group(1) if error_class else ""
    if code == 401 or (code == 403 and "token" in text.lower()):
        return FailureReason.AUTH_FAILED, f"Databricks rejected the access token: {token_advice}"
    if code == 403:
        return FailureReason.PERMISSION_DENIED, (
            "the token's user may not use this workspace or SQL warehouse: grant it workspace access and CAN USE "
            "on the warehouse (SQL Warehouses > Permissions)"
        )
    if code == 404:
        return FailureReason.WAREHOUSE_MISSING, (
            f"no SQL warehouse at httpPath {settings.http_path!r}: copy the HTTP path from the warehouse's "
            f"Connection details tab into spec.databricks.httpPath"
        )
    if isinstance(exc, MaxRetryDurationError) or any(isinstance(a, MaxRetryDurationError) for a in exc.args):
        return FailureReason.WARMING_UP, (
            f"the SQL warehouse did not answer within {int(WARM_UP_WAIT_SECONDS)} s (it is starting, or "
            f"overloaded); the next sync tries again. Keep it running or enable serverless for faster starts"
        )
    if code in (429, 503) or "TEMPORARILY_UNAVAILABLE" in text:
        return FailureReason.WARMING_UP, "the SQL warehouse is starting; the next sync tries again"
    if kind == "TABLE_OR_VIEW_NOT_FOUND":
        return (
            FailureReason.TABLE_MISSING,
            f"{name} does not exist or is not visible to the token's user: check spec.source",
        )
    if kind in ("SCHEMA_NOT_FOUND", "NO_SUCH_CATALOG_EXCEPTION", "CATALOG_NOT_FOUND"):
        return FailureReason.DATABASE_MISSING, (
            f"the catalog or schema of {name} does not exist or is not visible: check spec.source.catalog/schema "
            f"(or spec.databricks.catalog)"
        )
    if kind in ("INSUFFICIENT_PERMISSIONS", "PERMISSION_DENIED") or "PERMISSION_DENIED" in text:
        catalog = table.parts[0] if table and len(table.parts) == 3 else "<catalog>"
        schema = ".".join(table.parts[:-1]) if table else "<catalog>.<schema>"
        return FailureReason.PERMISSION_DENIED, (
            f"the token's user may not read {name}: GRANT USE CATALOG ON CATALOG {catalog} TO `<user>`; "
            f"GRANT USE SCHEMA ON SCHEMA {schema} TO `<user>`; GRANT SELECT ON TABLE {name} TO `<user>`"
        )
    if kind.startswith("UNRESOLVED_COLUMN"):
        return FailureReason.COLUMN_MISSING, f"a column is missing from {name}"
    if isinstance(exc, RequestError | OSError):
        return FailureReason.UNREACHABLE, (
            f"cannot talk to {settings.server_hostname}: check spec.databricks.serverHostname and httpPath and the "
            f"network path from the runner"
        )
    return FailureReason.QUERY_FAILED, f"a query on {name} failed"
