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
from pathlib import Path
from typing import Any

import duckdb

from cdi_operator.api.models import DuckDBSpec
from cdi_operator.warehouses.base import Column, FailureReason, WarehouseError
from cdi_operator.warehouses.sql import AWARE, NAIVE, Dialect, Select, SqlWarehouse, Table, bind_by_zone, double_quoted

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


quote_ident = double_quoted


def _timestamp_kind(type_name: str) -> str | None:
    upper = type_name.upper()
    return AWARE if upper in _AWARE_TYPES else NAIVE if upper in _NAIVE_TYPES else None


DIALECT = Dialect(
    quote=quote_ident,
    placeholder="?",
    bind=bind_by_zone,
    timestamp_kind=_timestamp_kind,
    updated_at_types="TIMESTAMP or TIMESTAMPTZ",
    naive_as_utc="timezone('UTC', CAST({column} AS TIMESTAMP))",  # converted by the server, cheaper than in Python
)


class DuckDBWarehouse(SqlWarehouse):
    dialect = DIALECT

    def __init__(self, path: Path) -> None:
        super().__init__()
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

    def close(self) -> None:
        """Nothing stays open between operations."""

    def _table(self, table: Sequence[str]) -> Table:
        return self._resolve(table)  # described again by every operation: the file may have changed meanwhile

    def _resolve(self, table: Sequence[str]) -> Table:
        with self.connection() as con:
            rows = con.execute(f"DESCRIBE SELECT * FROM {DIALECT.name(table)}").fetchall()
        return Table(tuple(table), tuple(Column(name=str(r[0]), type=str(r[1])) for r in rows))

    def _fetch(self, table: Table, select: Select) -> list[tuple[Any, ...]]:
        with self.connection() as con:
            return con.execute(select.sql, select.params).fetchall()

    def _stream(self, table: Table, select: Select, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        with self.connection() as con:
            cursor = con.execute(select.sql, select.params)
            while rows := cursor.fetchmany(fetch_rows):
                yield rows


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
