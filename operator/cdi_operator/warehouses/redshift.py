"""Amazon Redshift through `redshift_connector` (tested against PostgreSQL, which speaks the same protocol).

Reading streams through a server-side cursor (`DECLARE … CURSOR FOR SELECT …` and `FETCH FORWARD n`
inside a read-only transaction): a plain `execute` makes redshift_connector buffer the whole result in
memory. On Redshift the leader node materialises the cursor's result when the first row is fetched (see
Redshift's DECLARE page for the cursor size limits per node type); single-node clusters accept at most
1000 rows per FETCH, so the adapter never asks for more.

Table names are resolved through pg_catalog, case-insensitively with an exact match preferred, so `USERS` in a
manifest finds the table `users` (quoted identifiers are case-sensitive on PostgreSQL). Late-binding views and
external (Spectrum) tables have no pg_attribute rows; they are described from the result columns of a
`SELECT … LIMIT 0` instead (SVV_COLUMNS is not used). Only the credential's own database can be read.

UPDATED_AT of type TIMESTAMP (without time zone) or DATE is taken as UTC, as Braze advises for CDI source
tables; TIMESTAMPTZ is converted to UTC. Both arrive as aware UTC datetimes.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redshift_connector
from redshift_connector.core import Connection
from redshift_connector.error import Error as DriverError
from redshift_connector.error import InterfaceError, OperationalError

from cdi_operator.api.models import RedshiftSpec
from cdi_operator.warehouses import secret_value
from cdi_operator.warehouses.base import Column, FailureReason, WarehouseError, pick_table
from cdi_operator.warehouses.sql import (
    AWARE,
    NAIVE,
    Dialect,
    Select,
    SqlWarehouse,
    Table,
    bind_by_zone,
    double_quoted,
    failure,
)
from cdi_operator.warehouses.ssh_tunnel import SshTunnel

CONNECT_TIMEOUT_SECONDS = 30
# The most rows one FETCH may ask for: Redshift's limit on single-node clusters, and (measured on
# PostgreSQL) no slower per row than bigger fetches, since the driver's per-row decoding dominates.
MAX_FETCH_ROWS = 1000
APPLICATION_NAME = "cdi-operator"

_AWARE_TYPES = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"})
_NAIVE_TYPES = frozenset({"TIMESTAMP WITHOUT TIME ZONE", "TIMESTAMP", "DATE"})
# Type names of result columns by type OID, for tables pg_attribute does not describe.
_OID_TYPES = {
    16: "BOOLEAN",
    20: "BIGINT",
    21: "SMALLINT",
    23: "INTEGER",
    25: "TEXT",
    700: "REAL",
    701: "DOUBLE PRECISION",
    1042: "CHARACTER",
    1043: "CHARACTER VARYING",
    1082: "DATE",
    1114: "TIMESTAMP WITHOUT TIME ZONE",
    1184: "TIMESTAMP WITH TIME ZONE",
    1700: "NUMERIC",
    3802: "JSONB",
    114: "JSON",
    4000: "SUPER",
}

_COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  AND lower(c.relname) = lower(%s) AND {schema_filter}
ORDER BY n.nspname, c.relname, a.attnum
"""
_IN_SCHEMA = "lower(n.nspname) = lower(%s)"
_ON_SEARCH_PATH = "pg_catalog.pg_table_is_visible(c.oid)"

_cursor_ids = itertools.count(1)


def connect(settings: RedshiftSpec, secrets: Mapping[tuple[str, str], str]) -> RedshiftWarehouse:
    """Open a connection; raises WarehouseError with the reason and what to do, never with the password."""
    password = secret_value(secrets, settings.password_secret_ref)
    host, port, tunnel = settings.host, settings.port, None
    if settings.ssh_tunnel is not None:
        key = secret_value(secrets, settings.ssh_tunnel.private_key_secret_ref)
        tunnel = SshTunnel(settings.ssh_tunnel, key, settings.host, settings.port)
        host, port = "127.0.0.1", tunnel.local_port
    try:
        conn = redshift_connector.connect(
            host=host,
            port=port,
            database=settings.database,
            user=settings.user,
            password=password,
            ssl=settings.ssl,
            timeout=CONNECT_TIMEOUT_SECONDS,
            application_name=APPLICATION_NAME,
            tcp_keepalive=True,
        )
    except (DriverError, OSError) as exc:
        if tunnel is not None:
            tunnel.close()
        raise _failure(exc, settings, password) from None
    warehouse = RedshiftWarehouse(conn, settings, password, tunnel)
    warehouse.prepare_session()
    return warehouse


quote_ident = double_quoted


def _timestamp_kind(type_name: str) -> str | None:
    upper = type_name.upper()
    if upper in _AWARE_TYPES:
        return AWARE
    if upper in _NAIVE_TYPES or upper.startswith("TIMESTAMP("):
        return NAIVE
    return None


DIALECT = Dialect(
    quote=quote_ident,
    placeholder="%s",
    bind=bind_by_zone,
    timestamp_kind=_timestamp_kind,
    updated_at_types="TIMESTAMP (UTC) or TIMESTAMPTZ",
    fetch_rows=MAX_FETCH_ROWS,
    naive_as_utc="(CAST({column} AS TIMESTAMP) AT TIME ZONE 'UTC')",  # converted by the server, cheaper than in Python
)


class RedshiftWarehouse(SqlWarehouse):
    dialect = DIALECT

    def __init__(
        self, conn: Connection, settings: RedshiftSpec, password: str, tunnel: SshTunnel | None = None
    ) -> None:
        super().__init__()
        self._conn = conn
        self._tunnel = tunnel
        self._settings = settings
        self._password = password

    def prepare_session(self) -> None:
        """Autocommit outside reads, UTC session zone, and no socket timeout once connected."""
        self._conn.autocommit = True
        # The connect timeout stays on the socket otherwise, and would cut the first FETCH of a large cursor,
        # which waits for the leader node to materialise the whole result.
        raw = getattr(self._conn, "_usock", None)
        if isinstance(raw, socket.socket):
            raw.settimeout(None)
        self._run(None, "SET TIME ZONE 'UTC'")

    def close(self) -> None:
        with contextlib.suppress(DriverError, OSError):  # a broken connection has nothing left to save
            self._conn.close()
        if self._tunnel is not None:
            self._tunnel.close()

    # --- the adapter's own part -------------------------------------------------------------------------------

    def _resolve(self, table: Sequence[str]) -> Table:
        schema, name = self._split(table)
        parts = (name,) if schema is None else (schema, name)
        display = ".".join((self._settings.database, *parts))
        if schema is None:
            rows = self._run(None, _COLUMNS_SQL.format(schema_filter=_ON_SEARCH_PATH), [name])
        else:
            rows = self._run(None, _COLUMNS_SQL.format(schema_filter=_IN_SCHEMA), [name, schema])
        found = _pick(rows, schema, name)
        if found is None:
            # Not in pg_attribute (a late-binding view, an external table) or absent: let the server decide.
            probe = Table(parts, (), display)
            return Table(parts, self._probe(probe), display)
        (real_schema, real_name), columns = found
        resolved = Table((real_schema, real_name), columns, ".".join((self._settings.database, real_schema, real_name)))
        self._probe(resolved)  # the catalog shows tables one may not SELECT from; this finds out
        return resolved

    def _split(self, table: Sequence[str]) -> tuple[str | None, str]:
        parts = list(table)
        if not 1 <= len(parts) <= 3:
            raise WarehouseError(
                FailureReason.TABLE_MISSING,
                f"name the table as database/schema/table, not {'.'.join(parts)!r}",
            )
        if len(parts) == 3:
            database = parts.pop(0)
            if database.lower() != self._settings.database.lower():
                raise WarehouseError(
                    FailureReason.QUERY_FAILED,
                    f"spec.source.database is {database!r} but the WarehouseCredential connects to "
                    f"{self._settings.database!r}; reading another database is not supported, so point "
                    f"spec.redshift.database at {database!r} or fix spec.source.database",
                )
        return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])

    def _probe(self, table: Table) -> tuple[Column, ...]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(f"SELECT * FROM {DIALECT.name(table.parts)} LIMIT 0")
            description = cursor.description or []
            return tuple(Column(str(d[0]), _OID_TYPES.get(int(d[1]), f"OID {d[1]}")) for d in description)
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._password, table) from None

    def _fetch(self, table: Table, select: Select) -> list[tuple[Any, ...]]:
        return self._run(table, select.sql, select.params or None)

    def _run(self, table: Table | None, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            if cursor.description is None:
                return []
            return [tuple(row) for row in cursor.fetchall()]
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._password, table) from None

    def _stream(self, table: Table, select: Select, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        name = f"cdi_read_{next(_cursor_ids)}"
        cursor = self._conn.cursor()
        fetch = f"FETCH FORWARD {fetch_rows} FROM {name}"
        done = False
        try:
            cursor.execute("BEGIN READ ONLY")
            # Plain `CURSOR FOR`: Redshift's DECLARE has no NO SCROLL; its cursors are forward-only anyway.
            cursor.execute(f"DECLARE {name} CURSOR FOR {select.sql}", select.params)
            while True:
                cursor.execute(fetch)
                rows = cursor.fetchall()
                if rows:
                    yield [tuple(row) for row in rows]
                if len(rows) < fetch_rows:
                    break
            cursor.execute(f"CLOSE {name}")
            cursor.execute("COMMIT")
            done = True
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._password, table) from None
        finally:
            if not done:
                self._rollback_quietly()

    def _rollback_quietly(self) -> None:
        # When the connection is gone, the server ends the transaction itself.
        with contextlib.suppress(DriverError, OSError):
            if self._conn.in_transaction:
                self._conn.cursor().execute("ROLLBACK")


def _pick(
    rows: Sequence[tuple[Any, ...]], schema: str | None, name: str
) -> tuple[tuple[str, str], tuple[Column, ...]] | None:
    """The columns of the one table the rows describe; the exact spelling wins over case-insensitive ones."""
    return pick_table(rows, [lambda key: key[1] == name and (schema is None or key[0] == schema)], repr(name))


# --- errors -------------------------------------------------------------------------------------------------


def _failure(exc: BaseException, settings: RedshiftSpec, password: str, table: Table | None = None) -> WarehouseError:
    code, detail = _sqlstate(exc)
    reason, advice = _classify(exc, code, settings, table)
    where = f"{settings.host}:{settings.port}/{settings.database} as {settings.user}"
    return failure(reason, advice, where, detail, [password])


def _sqlstate(exc: BaseException) -> tuple[str | None, str]:
    """The SQLSTATE and the server's message of a driver error, or (None, a description) for others."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        return (str(args[0]["C"]) if "C" in args[0] else None), str(args[0].get("M", ""))
    parts = [str(a) for a in args if not isinstance(a, BaseException)]
    parts += [f"{type(a).__name__}: {a}" for a in args if isinstance(a, BaseException)]
    return None, "; ".join(p for p in parts if p) or type(exc).__name__


def _classify(
    exc: BaseException, code: str | None, settings: RedshiftSpec, table: Table | None
) -> tuple[FailureReason, str]:
    name = table.display if table else "the table"
    schema = table.parts[0] if table and len(table.parts) == 2 else "<schema>"
    qualified = f"{schema}.{table.parts[-1]}" if table else "<schema>.<table>"
    ref = settings.password_secret_ref
    if code in ("28P01", "28000"):
        return FailureReason.AUTH_FAILED, (
            f"authentication failed for user {settings.user!r}: check spec.redshift.user and the password in "
            f"Secret {ref.name!r} key {ref.key!r}"
        )
    if code == "3D000":
        return FailureReason.DATABASE_MISSING, (
            f"database {settings.database!r} does not exist: check spec.redshift.database"
        )
    if code in ("42P01", "3F000"):
        return FailureReason.TABLE_MISSING, f"{name} does not exist or is not visible: check spec.source"
    if code == "42501":
        return FailureReason.PERMISSION_DENIED, (
            f"user {settings.user!r} may not read {name}: GRANT USAGE ON SCHEMA {schema} TO {settings.user}; "
            f"GRANT SELECT ON {qualified} TO {settings.user}"
        )
    if code == "42703":
        return FailureReason.COLUMN_MISSING, f"a column is missing from {name}"
    if code == "57P03":
        return FailureReason.WARMING_UP, "the cluster is starting up or resuming; the next sync tries again"
    if (code and code.startswith("08")) or (code is None and _is_connection_error(exc)):
        return FailureReason.UNREACHABLE, _unreachable_advice(exc, settings)
    return FailureReason.QUERY_FAILED, f"a query on {name} failed"


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError | InterfaceError | OperationalError):
        return True
    return any(isinstance(a, OSError) for a in getattr(exc, "args", ()))


def _unreachable_advice(exc: BaseException, settings: RedshiftSpec) -> str:
    if "refuses SSL" in str(exc):
        return "the server does not accept TLS: enable SSL on it, or set spec.redshift.ssl to false"
    causes = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"cannot resolve host {settings.host!r}: check spec.redshift.host"
    return (
        f"cannot reach {settings.host}:{settings.port}: check spec.redshift.host/port, that the cluster is "
        f"publicly accessible or routed to, and that its security group admits the runner"
    )
