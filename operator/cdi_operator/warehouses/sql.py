"""The warehouse protocol implemented once for SQL warehouses, over a small description of each one's dialect.

An adapter says how its SQL is written in a `Dialect` (identifier quoting, how a bound parameter is written and
typed, how many rows one fetch may ask for, which UPDATED_AT types it reads) and keeps only what is its own:
connecting, finding a table in its catalog (`_resolve`), running a query and fetching its rows with the values
converted (`_fetch`, `_stream`), and mapping its driver's errors to a FailureReason (with `failure` below).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from cdi_operator.warehouses.base import (
    Column,
    FailureReason,
    ReadWindow,
    TableDescription,
    WarehouseError,
    bound_for_column,
)

# Kinds of UPDATED_AT for dialects whose bound parameters depend only on whether the column has a time zone.
AWARE = "aware"
NAIVE = "naive"


def double_quoted(name: str) -> str:
    """An identifier quoted by the SQL standard's rules (PostgreSQL, Redshift, Snowflake, DuckDB): in double
    quotes, inner ones doubled; the case is kept as given."""
    return '"' + name.replace('"', '""') + '"'


def bind_by_zone(name: str, kind: str, value: datetime) -> datetime:
    """A window bound for a driver that types it from the value: naive UTC for a NAIVE column, else aware UTC."""
    del name
    return bound_for_column(value, kind == NAIVE)


@dataclass(frozen=True, slots=True)
class Dialect:
    quote: Callable[[str], str]  # one identifier
    placeholder: str  # a bound parameter in the SQL, "{name}" standing for its name: "%s", "?", "@{name}", ":{name}"
    bind: Callable[[str, str, datetime], Any]  # (name, kind of UPDATED_AT, window bound) -> the driver's parameter
    timestamp_kind: Callable[[str], str | None]  # the type of UPDATED_AT -> its kind; None: not a timestamp
    updated_at_types: str  # what UPDATED_AT may be, for the message naming the fix
    missing_hint: str = ""  # what the message for a missing UPDATED_AT adds
    fetch_rows: int | None = None  # the most rows one fetch may ask for
    # SQL that reads a NAIVE UPDATED_AT as aware UTC, "{column}" standing for it; None: converted after fetching
    naive_as_utc: str | None = None

    def name(self, parts: Sequence[str]) -> str:
        return ".".join(self.quote(p) for p in parts)

    def param(self, name: str) -> str:
        return self.placeholder.format(name=name)


@dataclass(frozen=True, slots=True)
class Table:
    """A table as resolved in the warehouse's catalog: the parts naming it in SQL, by their real spelling."""

    parts: tuple[str, ...]
    columns: tuple[Column, ...] = ()
    shown: str | None = None  # the name users see, when it is not the parts joined

    @property
    def display(self) -> str:
        return self.shown or ".".join(self.parts)

    def column(self, name: str) -> Column | None:
        return self.description().column(name)

    def description(self) -> TableDescription:
        return TableDescription(self.display, self.columns)


@dataclass(frozen=True, slots=True)
class Select:
    """One query and what fetching its rows needs to know."""

    sql: str
    params: list[Any] = field(default_factory=list)
    columns: tuple[str, ...] = ()  # the names asked for, in the order of the values in each row
    updated_at: int | None = None  # where UPDATED_AT is in each row, when selected
    kind: str | None = None  # the kind of UPDATED_AT (Dialect.timestamp_kind)


class SqlWarehouse(ABC):
    """The Warehouse protocol (base.py) for a SQL warehouse; a subclass sets `dialect` and the hooks below."""

    dialect: Dialect

    def __init__(self) -> None:
        self._tables: dict[tuple[str, ...], Table] = {}

    # --- the protocol ---------------------------------------------------------------------------------------

    def describe(self, table: Sequence[str]) -> TableDescription:
        resolved = self._resolve(table)
        self._tables[tuple(table)] = resolved
        return resolved.description()

    def read_changes(
        self,
        table: Sequence[str],
        columns: Sequence[str],
        updated_at: str,
        window: ReadWindow,
        chunk_rows: int,
    ) -> Iterator[list[tuple[Any, ...]]]:
        resolved = self._table(table)
        ua, kind = self._updated_at(resolved, updated_at)
        quoted, d = self.dialect.quote(ua), self.dialect
        where, params = [f"{quoted} <= {d.param('until')}"], [d.bind("until", kind, window.until)]
        if window.since is not None:
            where.insert(0, f"{quoted} >= {d.param('since')}")
            params.insert(0, d.bind("since", kind, window.since))
        select = self._select(resolved, columns, (ua, kind), f"WHERE {' AND '.join(where)} ORDER BY {quoted}", params)
        fetch_rows = chunk_rows if d.fetch_rows is None else min(chunk_rows, d.fetch_rows)
        yield from self._stream(resolved, select, max(1, fetch_rows))

    def count_after(self, table: Sequence[str], updated_at: str, after: datetime) -> int:
        resolved = self._table(table)
        ua, kind = self._updated_at(resolved, updated_at)
        d = self.dialect
        return self._count(resolved, f"{d.quote(ua)} > {d.param('after')}", [d.bind("after", kind, after)])

    def count_undated(self, table: Sequence[str], updated_at: str) -> int:
        resolved = self._table(table)
        ua, _ = self._updated_at(resolved, updated_at)
        return self._count(resolved, f"{self.dialect.quote(ua)} IS NULL", [])

    def preview(self, table: Sequence[str], columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
        resolved = self._table(table)
        updated = resolved.column("UPDATED_AT")
        limit = max(0, int(limit))
        if updated is None:
            select = self._select(resolved, columns, None, f"LIMIT {limit}", [])
        else:
            ua, kind = self._updated_at(resolved, updated.name)
            order = f"ORDER BY {self.dialect.quote(ua)} DESC NULLS LAST LIMIT {limit}"
            select = self._select(resolved, columns, (ua, kind), order, [])
        return [dict(zip(columns, row, strict=True)) for row in self._fetch(resolved, select)]

    @abstractmethod
    def close(self) -> None: ...

    # --- what each adapter does its own way ---------------------------------------------------------------------

    @abstractmethod
    def _resolve(self, table: Sequence[str]) -> Table:
        """The table named by `table` (parts outermost first), with its columns; raises WarehouseError."""

    @abstractmethod
    def _fetch(self, table: Table, select: Select) -> list[tuple[Any, ...]]:
        """Every row `select` gives (a few), values converted as in `_stream`."""

    @abstractmethod
    def _stream(self, table: Table, select: Select, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        """The rows `select` gives in chunks of at most `fetch_rows`, UPDATED_AT as aware UTC."""

    # --- helpers --------------------------------------------------------------------------------------------

    def _table(self, table: Sequence[str]) -> Table:
        key = tuple(table)
        if key not in self._tables:
            self._tables[key] = self._resolve(table)
        return self._tables[key]

    def _updated_at(self, table: Table, updated_at: str) -> tuple[str, str]:
        """(the column's real spelling, its kind); WarehouseError when it is missing or not a timestamp."""
        column = table.column(updated_at)
        if column is None:
            raise WarehouseError(
                FailureReason.COLUMN_MISSING,
                f"{table.display} has no column {updated_at!r}; add an UPDATED_AT column{self.dialect.missing_hint}",
            )
        kind = self.dialect.timestamp_kind(column.type)
        if kind is None:
            raise WarehouseError(
                FailureReason.COLUMN_TYPE,
                f"{table.display}.{column.name} is {column.type}; UPDATED_AT must be {self.dialect.updated_at_types}",
            )
        return column.name, kind

    def _select(
        self, table: Table, columns: Sequence[str], updated_at: tuple[str, str] | None, rest: str, params: list[Any]
    ) -> Select:
        """SELECT the columns by their real spelling from `table`, then `rest` (WHERE, ORDER BY, LIMIT)."""
        exprs, index = [], None
        for i, name in enumerate(columns):
            column = table.column(name)
            quoted = self.dialect.quote(column.name if column else name)
            if updated_at is not None and column is not None and column.name == updated_at[0]:
                if updated_at[1] == NAIVE and self.dialect.naive_as_utc:
                    quoted = self.dialect.naive_as_utc.format(column=quoted)
                index = i if index is None else index
            exprs.append(quoted)
        sql = f"SELECT {', '.join(exprs)} FROM {self.dialect.name(table.parts)} {rest}"
        kind = updated_at[1] if updated_at else None
        return Select(sql, params, tuple(columns), index, kind)

    def _count(self, table: Table, condition: str, params: list[Any]) -> int:
        rows = self._fetch(
            table, Select(f"SELECT count(*) FROM {self.dialect.name(table.parts)} WHERE {condition}", params)
        )
        return int(rows[0][0]) if rows else 0


def as_utc(value: Any) -> Any:
    """A datetime as aware UTC (one without a zone taken as UTC), a date as midnight UTC; others unchanged."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def utc_at(row: tuple[Any, ...], index: int | None) -> tuple[Any, ...]:
    """The row with its value at `index` made aware UTC (`as_utc`)."""
    if index is None:
        return row
    return (*row[:index], as_utc(row[index]), *row[index + 1 :])


def failure(reason: FailureReason, advice: str, where: str, detail: str, secrets: Iterable[str] = ()) -> WarehouseError:
    """The error users see: what to do, then where and what the server said, with every secret value masked."""
    context = ": ".join(p for p in (where, detail) if p)
    message = f"{advice} ({context})" if context else advice
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return WarehouseError(reason, message)
