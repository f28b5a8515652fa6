"""The embedded DuckDB source: a local database file, for `cdi demo`, `cdi sync -f` runs and tests.

Every operation opens the file, does its work and closes it again. DuckDB lets one process write a file or any
number of processes read it, never both: a reader that stayed open would lock a writer out for as long as the
Warehouse object lives. A read holds the file only while its rows are streamed.

The file is opened read-only. Inside one process DuckDB refuses a read-only connection while a read-write
one to the same file is open ("different configuration"); then the adapter opens it with the default
configuration, which shares that open database, and still only reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from cdi_operator.api.models import DuckDBSpec
from cdi_operator.warehouses.base import (
    Column,
    FailureReason,
    ReadWindow,
    TableDescription,
    WarehouseError,
    bound_for_column,
)

_AWARE_TYPES = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"})
_NAIVE_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATETIME", "DATE"})


def connect(settings: DuckDBSpec, secrets: Mapping[tuple[str, str], str]) -> DuckDBWarehouse:
    """A DuckDB warehouse on `settings.path`; WarehouseError(DatabaseMissing) when the file does not exist."""
    del secrets  # a local file has none
    path = Path(settings.path).expanduser()
    if not path.is_file():
        raise WarehouseError(
            FailureReason.DATABASE_MISSING,
            f"the DuckDB file {str(path)!r} does not exist; check spec.duckdb.path of the credential",
        )
    warehouse = DuckDBWarehouse(path)
    with warehouse.connection():
        pass  # fail now, with the reason, if the file cannot be opened
    return warehouse


def quote_ident(name: str) -> str:
    """An identifier quoted by DuckDB's rules: in double quotes, with inner double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def qualified(table: Sequence[str]) -> str:
    return ".".join(quote_ident(part) for part in table)


class DuckDBWarehouse:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._open()
        try:
            # TIMESTAMPTZ values come back in the session's zone; UTC makes them aware UTC.
            con.execute("SET TimeZone = 'UTC'")
            yield con
        except duckdb.Error as exc:
            raise _failure(exc, self.path) from None
        finally:
            con.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.path), read_only=True)
        except duckdb.ConnectionException as exc:
            if "different configuration" not in str(exc):
                raise _failure(exc, self.path) from None
        except (duckdb.Error, OSError) as exc:
            raise _failure(exc, self.path) from None
        try:
            return duckdb.connect(str(self.path))
        except (duckdb.Error, OSError) as exc:
            raise _failure(exc, self.path) from None

    def describe(self, table: Sequence[str]) -> TableDescription:
        with self.connection() as con:
            return _describe(con, table)

    def read_changes(
        self,
        table: Sequence[str],
        columns: Sequence[str],
        updated_at: str,
        window: ReadWindow,
        chunk_rows: int,
    ) -> Iterator[list[tuple[Any, ...]]]:
        with self.connection() as con:
            kind = _timestamp_kind(_describe(con, table), updated_at)
            ua = quote_ident(updated_at)
            where, params = [f"{ua} <= ?"], [bound_for_column(window.until, kind == "naive")]
            if window.since is not None:
                where.insert(0, f"{ua} >= ?")
                params.insert(0, bound_for_column(window.since, kind == "naive"))
            sql = (
                f"SELECT {_select_list(columns, updated_at, kind)} FROM {qualified(table)} "
                f"WHERE {' AND '.join(where)} ORDER BY {ua}"
            )
            cursor = con.execute(sql, params)
            while rows := cursor.fetchmany(chunk_rows):
                yield rows

    def count_after(self, table: Sequence[str], updated_at: str, after: datetime) -> int:
        with self.connection() as con:
            kind = _timestamp_kind(_describe(con, table), updated_at)
            sql = f"SELECT count(*) FROM {qualified(table)} WHERE {quote_ident(updated_at)} > ?"
            row = con.execute(sql, [bound_for_column(after, kind == "naive")]).fetchone()
            return int(row[0]) if row else 0

    def count_undated(self, table: Sequence[str], updated_at: str) -> int:
        with self.connection() as con:
            sql = f"SELECT count(*) FROM {qualified(table)} WHERE {quote_ident(updated_at)} IS NULL"
            row = con.execute(sql).fetchone()
            return int(row[0]) if row else 0

    def preview(self, table: Sequence[str], columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
        with self.connection() as con:
            description = _describe(con, table)
            updated = description.column("UPDATED_AT")
            if updated is None:
                sql = f"SELECT {_select_list(columns, None, None)} FROM {qualified(table)} LIMIT ?"
            else:
                kind = _timestamp_kind(description, updated.name)
                sql = (
                    f"SELECT {_select_list(columns, updated.name, kind)} FROM {qualified(table)} "
                    f"ORDER BY {quote_ident(updated.name)} DESC NULLS LAST LIMIT ?"
                )
            rows = con.execute(sql, [limit]).fetchall()
            return [dict(zip(columns, row, strict=True)) for row in rows]

    def close(self) -> None:
        """Nothing stays open between operations."""


def _describe(con: duckdb.DuckDBPyConnection, table: Sequence[str]) -> TableDescription:
    rows = con.execute(f"DESCRIBE SELECT * FROM {qualified(table)}").fetchall()
    return TableDescription(name=".".join(table), columns=tuple(Column(name=str(r[0]), type=str(r[1])) for r in rows))


def _timestamp_kind(description: TableDescription, updated_at: str) -> str:
    """'aware' or 'naive' for the UPDATED_AT column; WarehouseError when it is not a timestamp at all."""
    column = description.column(updated_at)
    if column is None:
        raise WarehouseError(
            FailureReason.COLUMN_MISSING,
            f"{description.name} has no column {updated_at!r}; add an UPDATED_AT column",
        )
    if column.type.upper() in _AWARE_TYPES:
        return "aware"
    if column.type.upper() in _NAIVE_TYPES:
        return "naive"
    raise WarehouseError(
        FailureReason.COLUMN_TYPE,
        f"{description.name}.{column.name} is {column.type}; UPDATED_AT must be TIMESTAMP or TIMESTAMPTZ",
    )


def _select_list(columns: Sequence[str], updated_at: str | None, kind: str | None) -> str:
    """The columns; a zone-less UPDATED_AT is read as UTC and converted in SQL (cheaper than in Python)."""
    wanted = updated_at.upper() if updated_at else None
    exprs = []
    for name in columns:
        quoted = quote_ident(name)
        if kind == "naive" and name.upper() == wanted:
            quoted = f"timezone('UTC', CAST({quoted} AS TIMESTAMP))"
        exprs.append(quoted)
    return ", ".join(exprs)


def _failure(exc: BaseException, path: Path) -> WarehouseError:
    text = str(exc).split("\n", 1)[0]
    if isinstance(exc, WarehouseError):
        return exc
    if isinstance(exc, PermissionError) or "Permission denied" in text:
        return WarehouseError(
            FailureReason.PERMISSION_DENIED,
            f"cannot open {str(path)!r}: {text}; let the runner's user read it",
        )
    if "lock" in text.lower():
        return WarehouseError(
            FailureReason.UNREACHABLE,
            f"another process has {str(path)!r} open for writing (DuckDB allows one writer or many readers); "
            f"close that connection and sync again",
        )
    if isinstance(exc, duckdb.IOException) and "does not exist" in text:
        return WarehouseError(FailureReason.DATABASE_MISSING, f"the DuckDB file {str(path)!r} does not exist")
    if isinstance(exc, duckdb.CatalogException):
        return WarehouseError(FailureReason.TABLE_MISSING, f"{text}; check spec.source of the CdiIntegration")
    if isinstance(exc, duckdb.BinderException) and "column" in text.lower():
        return WarehouseError(FailureReason.COLUMN_MISSING, text)
    return WarehouseError(FailureReason.QUERY_FAILED, text)
