"""The source contract's columns: check a table's columns once per sync and say which to read.

A problem here is sync-level (`SourceColumnsError`), checked by the runner before it reads and by the
controller's connection test. Columns other than UPDATED_AT, the identifier columns and PAYLOAD (for catalogItems:
UPDATED_AT, ID, PAYLOAD and DELETED) are ignored (not selected); two columns that differ only in case and match the
same contract column are an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdi_operator.api.models import DataType

__all__ = [
    "ALIAS_LABEL",
    "ALIAS_NAME",
    "BRAZE_ID",
    "DELETED",
    "EMAIL",
    "EXTERNAL_ID",
    "IDENTIFIER_COLUMNS",
    "ITEM_ID",
    "PAYLOAD",
    "PHONE",
    "UPDATED_AT",
    "ColumnPlan",
    "SourceColumnsError",
    "plan_columns",
]

UPDATED_AT = "UPDATED_AT"
EXTERNAL_ID = "EXTERNAL_ID"
ALIAS_NAME = "ALIAS_NAME"
ALIAS_LABEL = "ALIAS_LABEL"
BRAZE_ID = "BRAZE_ID"
EMAIL = "EMAIL"
PHONE = "PHONE"
PAYLOAD = "PAYLOAD"
ITEM_ID = "ID"
DELETED = "DELETED"

IDENTIFIER_COLUMNS = (EXTERNAL_ID, ALIAS_NAME, ALIAS_LABEL, BRAZE_ID, EMAIL, PHONE)
_CONTRACT_COLUMNS = (UPDATED_AT, *IDENTIFIER_COLUMNS, PAYLOAD)
_CATALOG_COLUMNS = (UPDATED_AT, ITEM_ID, PAYLOAD, DELETED)
_FIELDS = {ITEM_ID: "item_id"}


class SourceColumnsError(ValueError):
    """The table cannot be synced as it is: each problem names the column and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """The columns to SELECT (actual names, UPDATED_AT first) and where each contract column sits in a row."""

    data_type: DataType
    columns: tuple[str, ...]
    external_id: int | None = None
    alias_name: int | None = None
    alias_label: int | None = None
    braze_id: int | None = None
    email: int | None = None
    phone: int | None = None
    payload: int | None = None
    item_id: int | None = None
    deleted: int | None = None

    def index(self, contract_column: str) -> int | None:
        """Position of a contract column (e.g. "EXTERNAL_ID") in `columns`, None when the table lacks it."""
        if contract_column == UPDATED_AT:
            return 0
        value: int | None = getattr(self, _FIELDS.get(contract_column, contract_column.lower()))
        return value


def plan_columns(data_type: DataType, table_columns: Sequence[str]) -> ColumnPlan:
    """Check the table's columns against the source contract and say which to read. Raises "
    "SourceColumnsError."""
    data_type = DataType(data_type)
    if data_type is DataType.CATALOG_ITEMS:
        return _plan_catalog_columns(table_columns)
    found, problems = _match(table_columns, _CONTRACT_COLUMNS)
    if UPDATED_AT not in found:
        problems.append(_MISSING_UPDATED_AT)
    if (ALIAS_NAME in found) != (ALIAS_LABEL in found):
        have, lack = (ALIAS_NAME, ALIAS_LABEL) if ALIAS_NAME in found else (ALIAS_LABEL, ALIAS_NAME)
        problems.append(f"column {have} is present without {lack}; an alias needs both columns, add {lack}")
    identifiers = [c for c in IDENTIFIER_COLUMNS if c in found]
    if not identifiers:
        problems.append(
            "no identifier column; add EXTERNAL_ID, ALIAS_NAME with ALIAS_LABEL, BRAZE_ID, EMAIL or PHONE"
            if data_type != DataType.USER_DELETES
            else "no identifier column; add EXTERNAL_ID, ALIAS_NAME with ALIAS_LABEL, or BRAZE_ID"
        )
    if data_type == DataType.USER_DELETES:
        if PAYLOAD in found:
            problems.append(
                f"column {found[PAYLOAD]!r} (PAYLOAD) is not allowed for userDeletes; user deletes take "
                "identifier "
                "columns only, drop PAYLOAD (for example in a view)"
            )
        if identifiers and not {EXTERNAL_ID, ALIAS_NAME, ALIAS_LABEL, BRAZE_ID} & set(identifiers):
            problems.append(
                "userDeletes cannot delete by EMAIL or PHONE (Braze's /users/delete takes external ids, "
                "aliases or "
                "Braze ids); add EXTERNAL_ID, ALIAS_NAME with ALIAS_LABEL, or BRAZE_ID"
            )
    elif PAYLOAD not in found:
        problems.append(
            f"column PAYLOAD is missing; add a PAYLOAD column holding a JSON object with the fields of each "
            f"{data_type.value} row"
        )
    if problems:
        raise SourceColumnsError(problems)
    wanted = [UPDATED_AT, *identifiers]
    if data_type != DataType.USER_DELETES:
        wanted.append(PAYLOAD)
    positions = {c: i for i, c in enumerate(wanted)}
    return ColumnPlan(
        data_type=data_type,
        columns=tuple(found[c] for c in wanted),
        external_id=positions.get(EXTERNAL_ID),
        alias_name=positions.get(ALIAS_NAME),
        alias_label=positions.get(ALIAS_LABEL),
        braze_id=positions.get(BRAZE_ID),
        email=positions.get(EMAIL),
        phone=positions.get(PHONE),
        payload=positions.get(PAYLOAD),
    )


_MISSING_UPDATED_AT = (
    "column UPDATED_AT is missing; add a UTC timestamp column named UPDATED_AT holding when each row last changed"
)


def _match(table_columns: Sequence[str], contract: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Contract column -> the table's column of that name (case-insensitively), and the clashes."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for name in table_columns:
        canonical = name.upper()
        if canonical not in contract:
            continue
        if canonical in found:
            problems.append(
                f"columns {found[canonical]!r} and {name!r} both match {canonical} (names are matched "
                "case-insensitively); rename or drop one of them, for example in a view"
            )
            continue
        found[canonical] = name
    return found, problems


def _plan_catalog_columns(table_columns: Sequence[str]) -> ColumnPlan:
    found, problems = _match(table_columns, _CATALOG_COLUMNS)
    if UPDATED_AT not in found:
        problems.append(_MISSING_UPDATED_AT)
    if ITEM_ID not in found:
        problems.append("column ID is missing; add an ID column holding each catalog item's id")
    if PAYLOAD not in found:
        problems.append(
            "column PAYLOAD is missing; add a PAYLOAD column holding a JSON object with the catalog item's fields"
        )
    if problems:
        raise SourceColumnsError(problems)
    wanted = [c for c in _CATALOG_COLUMNS if c in found]
    positions = {c: i for i, c in enumerate(wanted)}
    return ColumnPlan(
        data_type=DataType.CATALOG_ITEMS,
        columns=tuple(found[c] for c in wanted),
        payload=positions[PAYLOAD],
        item_id=positions[ITEM_ID],
        deleted=positions.get(DELETED),
    )
