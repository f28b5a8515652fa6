"""The one small protocol every warehouse adapter implements.

Adapters wrap blocking client libraries, so the protocol is synchronous; the runner calls it from a worker thread
and overlaps reading with sending.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cdi_operator.api.reasons import FailureReason

__all__ = ["FailureReason"]  # defined with the other reasons; the adapters import it from here


class WarehouseError(Exception):
    """A sync-level warehouse failure. The message is safe to show: it never holds a secret."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # as the warehouse spells it
    type: str  # the warehouse's own type name, e.g. "TIMESTAMP WITHOUT TIME ZONE", "VARIANT"


@dataclass(frozen=True, slots=True)
class TableDescription:
    name: str  # the qualified name as shown to users
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column | None:
        wanted = name.upper()
        return next((c for c in self.columns if c.name.upper() == wanted), None)


@dataclass(frozen=True, slots=True)
class ReadWindow:
    """Rows with `since <= UPDATED_AT <= until`, or every row up to `until` when `since` is None."""

    since: datetime | None  # aware UTC; inclusive, so rows at the watermark itself are seen again
    until: datetime  # aware UTC; inclusive


def pick_table(
    rows: Sequence[tuple[Any, ...]], preferences: Sequence[Callable[[tuple[str, str]], bool]], what: str
) -> tuple[tuple[str, str], tuple[Column, ...]] | None:
    """The (schema, table) and columns of the one table that catalog rows (schema, table, column, type) describe,
    when names matched case-insensitively: the first table a preference accepts (tried in order), else the only
    one; WarehouseError naming every spelling when several differ only in case. None when the rows are empty."""
    tables: dict[tuple[str, str], list[Column]] = {}
    for schema, table, column, type_name in rows:
        tables.setdefault((str(schema), str(table)), []).append(Column(str(column), str(type_name).upper()))
    if not tables:
        return None
    key = next((k for prefer in preferences for k in tables if prefer(k)), None)
    if key is None:
        if len(tables) > 1:
            spelled = ", ".join(".".join(k) for k in tables)
            raise WarehouseError(
                FailureReason.TABLE_MISSING,
                f"{what} matches tables that differ only in case ({spelled}); spell it exactly in spec.source",
            )
        key = next(iter(tables))
    return key, tuple(tables[key])


def bound_for_column(value: datetime, naive_column: bool) -> datetime:
    """A window bound typed like the UPDATED_AT column, so the column is compared as stored (sort keys and zone
    maps still prune): naive UTC for a TIMESTAMP without time zone, aware UTC otherwise."""
    utc = value.astimezone(UTC)
    return utc.replace(tzinfo=None) if naive_column else utc


class Warehouse(Protocol):
    """A connection to one warehouse, opened by `connect()` of the adapter's module."""

    def describe(self, table: Sequence[str]) -> TableDescription:
        """Columns of the table or view named by its parts (outermost first). Raises WarehouseError."""
        ...

    def read_changes(
        self,
        table: Sequence[str],
        columns: Sequence[str],
        updated_at: str,
        window: ReadWindow,
        chunk_rows: int,
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Stream the rows in `window`, ordered by `updated_at`, in chunks of at most `chunk_rows`.

        Values come in the order of `columns`; `updated_at` values as aware UTC datetimes; JSON payloads as text or
        as the driver's native dict. Memory stays bounded by one chunk whatever the table's size. The window bounds
        are bound parameters, never text in the SQL.
        """
        ...

    def count_after(self, table: Sequence[str], updated_at: str, after: datetime) -> int:
        """How many rows are dated after `after` (those the settle bound leaves for later)."""
        ...

    def count_undated(self, table: Sequence[str], updated_at: str) -> int:
        """How many rows have no `updated_at` at all: no window selects them, so they are reported instead."""
        ...

    def preview(self, table: Sequence[str], columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """A few rows, newest first, without reading the table whole."""
        ...

    def close(self) -> None: ...


class Connector(Protocol):
    """What each adapter module exposes as `connect`: settings block + resolved secret values -> Warehouse."""

    def __call__(self, settings: Any, secrets: Mapping[tuple[str, str], str]) -> Warehouse: ...
