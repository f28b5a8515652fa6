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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redshift_connector
from redshift_connector.core import Connection
from redshift_connector.error import Error as DriverError
from redshift_connector.error import InterfaceError, OperationalError

from cdi_operator.api.models import RedshiftSpec
from cdi_operator.warehouses import secret_value
from cdi_operator.warehouses.base import (
    Column,
    FailureReason,
    ReadWindow,
    TableDescription,
    WarehouseError,
    bound_for_column,
    pick_table,
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


def quote_ident(name: str) -> str:
    """An identifier quoted by PostgreSQL's (and Redshift's) rules: double quotes, inner ones doubled."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class _Table:
    schema: str | None
    name: str
    columns: tuple[Column, ...]
    display: str

    @property
    def sql(self) -> str:
        parts = (self.name,) if self.schema is None else (self.schema, self.name)
        return ".".join(quote_ident(p) for p in parts)

    def column(self, name: str) -> Column | None:
        return TableDescription(self.display, self.columns).column(name)


class RedshiftWarehouse:
    def __init__(
        self, conn: Connection, settings: RedshiftSpec, password: str, tunnel: SshTunnel | None = None
    ) -> None:
        self._conn = conn
        self._tunnel = tunnel
        self._settings = settings
        self._password = password
        self._tables: dict[tuple[str, ...], _Table] = {}

    def prepare_session(self) -> None:
        """Autocommit outside reads, UTC session zone, and no socket timeout once connected."""
        self._conn.autocommit = True
        # The connect timeout stays on the socket otherwise, and would cut the first FETCH of a large cursor,
        # which waits for the leader node to materialise the whole result.
        raw = getattr(self._conn, "_usock", None)
        if isinstance(raw, socket.socket):
            raw.settimeout(None)
        self._run(None, "SET TIME ZONE 'UTC'")

    # --- the protocol ---------------------------------------------------------------------------------------

    def describe(self, table: Sequence[str]) -> TableDescription:
        resolved = self._resolve(table)
        self._tables[tuple(table)] = resolved
        return TableDescription(name=resolved.display, columns=resolved.columns)

    def read_changes(
        self,
        table: Sequence[str],
        columns: Sequence[str],
        updated_at: str,
        window: ReadWindow,
        chunk_rows: int,
    ) -> Iterator[list[tuple[Any, ...]]]:
        resolved = self._table(table)
        kind, ua = _timestamp_kind(resolved, updated_at)
        where, params = [f"{quote_ident(ua)} <= %s"], [bound_for_column(window.until, kind == "naive")]
        if window.since is not None:
            where.insert(0, f"{quote_ident(ua)} >= %s")
            params.insert(0, bound_for_column(window.since, kind == "naive"))
        sql = (
            f"SELECT {_select_list(resolved, columns, ua, kind)} FROM {resolved.sql} "
            f"WHERE {' AND '.join(where)} ORDER BY {quote_ident(ua)}"
        )
        yield from self._stream(resolved, sql, params, max(1, min(chunk_rows, MAX_FETCH_ROWS)))

    def count_after(self, table: Sequence[str], updated_at: str, after: datetime) -> int:
        resolved = self._table(table)
        kind, ua = _timestamp_kind(resolved, updated_at)
        sql = f"SELECT count(*) FROM {resolved.sql} WHERE {quote_ident(ua)} > %s"
        rows = self._run(resolved, sql, [bound_for_column(after, kind == "naive")])
        return int(rows[0][0])

    def count_undated(self, table: Sequence[str], updated_at: str) -> int:
        resolved = self._table(table)
        _, ua = _timestamp_kind(resolved, updated_at)
        rows = self._run(resolved, f"SELECT count(*) FROM {resolved.sql} WHERE {quote_ident(ua)} IS NULL")
        return int(rows[0][0])

    def preview(self, table: Sequence[str], columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
        resolved = self._table(table)
        updated = resolved.column("UPDATED_AT")
        if updated is None:
            sql = f"SELECT {_select_list(resolved, columns, None, None)} FROM {resolved.sql} LIMIT {int(limit)}"
        else:
            kind, ua = _timestamp_kind(resolved, updated.name)
            sql = (
                f"SELECT {_select_list(resolved, columns, ua, kind)} FROM {resolved.sql} "
                f"ORDER BY {quote_ident(ua)} DESC NULLS LAST LIMIT {int(limit)}"
            )
        rows = self._run(resolved, sql)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def close(self) -> None:
        with contextlib.suppress(DriverError, OSError):  # a broken connection has nothing left to save
            self._conn.close()
        if self._tunnel is not None:
            self._tunnel.close()

    # --- helpers --------------------------------------------------------------------------------------------

    def _table(self, table: Sequence[str]) -> _Table:
        key = tuple(table)
        if key not in self._tables:
            self._tables[key] = self._resolve(table)
        return self._tables[key]

    def _resolve(self, table: Sequence[str]) -> _Table:
        schema, name = self._split(table)
        display = ".".join((self._settings.database, schema, name) if schema else (self._settings.database, name))
        if schema is None:
            rows = self._run(None, _COLUMNS_SQL.format(schema_filter=_ON_SEARCH_PATH), [name])
        else:
            rows = self._run(None, _COLUMNS_SQL.format(schema_filter=_IN_SCHEMA), [name, schema])
        found = _pick(rows, schema, name)
        if found is None:
            # Not in pg_attribute (a late-binding view, an external table) or absent: let the server decide.
            probe = _Table(schema, name, (), display)
            described = self._probe(probe)
            return _Table(schema, name, described, display)
        (real_schema, real_name), columns = found
        resolved = _Table(real_schema, real_name, columns, ".".join((self._settings.database, real_schema, real_name)))
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

    def _probe(self, table: _Table) -> tuple[Column, ...]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(f"SELECT * FROM {table.sql} LIMIT 0")
            description = cursor.description or []
            return tuple(Column(str(d[0]), _OID_TYPES.get(int(d[1]), f"OID {d[1]}")) for d in description)
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._password, table) from None

    def _run(self, table: _Table | None, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            if cursor.description is None:
                return []
            return [tuple(row) for row in cursor.fetchall()]
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, self._password, table) from None

    def _stream(
        self, table: _Table, sql: str, params: Sequence[Any], fetch_rows: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        name = f"cdi_read_{next(_cursor_ids)}"
        cursor = self._conn.cursor()
        fetch = f"FETCH FORWARD {fetch_rows} FROM {name}"
        done = False
        try:
            cursor.execute("BEGIN READ ONLY")
            # Plain `CURSOR FOR`: Redshift's DECLARE has no NO SCROLL; its cursors are forward-only anyway.
            cursor.execute(f"DECLARE {name} CURSOR FOR {sql}", params)
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


def _timestamp_kind(table: _Table, updated_at: str) -> tuple[str, str]:
    """('aware' or 'naive', the column's real spelling); raises WarehouseError when it is not a timestamp."""
    column = table.column(updated_at)
    if column is None:
        raise WarehouseError(
            FailureReason.COLUMN_MISSING,
            f"{table.display} has no column {updated_at!r}; add an UPDATED_AT column",
        )
    type_name = column.type.upper()
    if type_name in _AWARE_TYPES:
        return "aware", column.name
    if type_name in _NAIVE_TYPES or type_name.startswith("TIMESTAMP("):
        return "naive", column.name
    raise WarehouseError(
        FailureReason.COLUMN_TYPE,
        f"{table.display}.{column.name} is {column.type}; UPDATED_AT must be TIMESTAMP (UTC) or TIMESTAMPTZ",
    )


def _select_list(table: _Table, columns: Sequence[str], updated_at: str | None, kind: str | None) -> str:
    """The columns by their real spelling; a zone-less UPDATED_AT is read as UTC, converted by the server."""
    exprs = []
    for name in columns:
        column = table.column(name)
        quoted = quote_ident(column.name if column else name)
        if kind == "naive" and column is not None and column.name == updated_at:
            quoted = f"(CAST({quoted} AS TIMESTAMP) AT TIME ZONE 'UTC')"
        exprs.append(quoted)
    return ", ".join(exprs)


# --- errors -------------------------------------------------------------------------------------------------


def _failure(exc: BaseException, settings: RedshiftSpec, password: str, table: _Table | None = None) -> WarehouseError:
    code, detail = _sqlstate(exc)
    reason, advice = _classify(exc, code, settings, table)
    where = f"{settings.host}:{settings.port}/{settings.database} as {settings.user}"
    message = f"{advice} ({where}: {detail})" if detail else f"{advice} ({where})"
    if password:
        message = message.replace(password, "***")
    return WarehouseError(reason, message)


def _sqlstate(exc: BaseException) -> tuple[str | None, str]:
    """The SQLSTATE and the server's message of a driver error, or (None, a description) for others."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        return (str(args[0]["C"]) if "C" in args[0] else None), str(args[0].get("M", ""))
    parts = [str(a) for a in args if not isinstance(a, BaseException)]
    parts += [f"{type(a).__name__}: {a}" for a in args if isinstance(a, BaseException)]
    return None, "; ".join(p for p in parts if p) or type(exc).__name__


def _classify(
    exc: BaseException, code: str | None, settings: RedshiftSpec, table: _Table | None
) -> tuple[FailureReason, str]:
    name = table.display if table else "the table"
    schema = table.schema if table and table.schema else "<schema>"
    qualified = f"{schema}.{table.name}" if table else "<schema>.<table>"
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
