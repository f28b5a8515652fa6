"""Catalog rows (dataType catalogItems) → items for `PUT` / `DELETE /catalogs/{name}/items`, checked as Braze would.

A row is `UPDATED_AT`, `ID`, `PAYLOAD` and optionally `DELETED`. `DELETED = true` deletes the item (its PAYLOAD is
not read, and may be NULL); otherwise the PAYLOAD object's fields, with `"id"` set from the ID column, create or
replace the item. Decisions where BRAZE-API.md is silent:

- ID: text (or a whole number, sent as text), at most 250 characters of letters, digits, `-` and `_`, exactly as
  stored: no trimming or case folding, as for user identifiers.
- DELETED: a boolean, or NULL (not deleted); anything else is `INVALID_FIELD_TYPE` rather than a guess, since a
  wrong guess deletes an item.
- A PAYLOAD key `id` must equal the ID column (it is dropped); another value is `IDENTIFIER_IN_PAYLOAD`.
- Whether a field exists in the catalog and has the right type is Braze's to say (`invalid-fields`,
  `unable-to-coerce-value`): the runner does not know the schema during a run; the connection test checks the
  preview's fields against it.
- Fingerprint: blake2b-64 of the id, whether the row deletes, and the PAYLOAD's bytes (see converter.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cdi_operator.api.models import DataType
from cdi_operator.runner.columns import ITEM_ID, ColumnPlan
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.rows import Delivery, Reject, RowErrorReason, RowLimits
from cdi_operator.runner.values import blank, clip, quote, type_name

__all__ = ["DELETE_TARGET", "PUT_TARGET", "CatalogRowConverter"]

R = RowErrorReason

PUT_TARGET = "items"
DELETE_TARGET = "delete_items"
_ITEM_ID = re.compile(r"[A-Za-z0-9_-]+")


class CatalogRowConverter(RowConverter):
    """Turns catalog rows (values in `plan.columns` order) into item Deliveries or RowErrors; never raises."""

    def __init__(self, plan: ColumnPlan, *, limits: RowLimits | None = None) -> None:
        super().__init__(DataType.CATALOG_ITEMS, plan, limits=limits)
        assert plan.item_id is not None and plan.payload is not None  # plan_columns guarantees both
        self._id_index = plan.item_id
        self._deleted_index = plan.deleted

    def _convert(self, row: Sequence[Any]) -> Delivery:
        if len(row) != self._width:
            raise self._wrong_width(row)
        item_id = self._item_id(row[self._id_index])
        updated_at = row[0]
        if type(updated_at) is not datetime or updated_at.tzinfo is not UTC:
            updated_at = self._updated_at(updated_at)
        key = "i:" + item_id
        if self._deleted(row):
            digest = hashlib.blake2b(key.encode() + b"\x1edeleted", digest_size=8).hexdigest()
            return Delivery(DELETE_TARGET, {"id": item_id}, key, digest, updated_at)
        payload, raw = self._payload(row[self._payload_index])
        if "id" in payload and payload.pop("id") != item_id:
            raise Reject(
                R.IDENTIFIER_IN_PAYLOAD,
                "PAYLOAD key 'id' differs from the ID column; the item's id comes from ID — remove it from PAYLOAD",
            )
        for field, value in payload.items():
            self._check(field, value, f"PAYLOAD.{field}" if isinstance(field, str) else "PAYLOAD", 1)
        digest = hashlib.blake2b(key.encode() + b"\x1e" + raw, digest_size=8).hexdigest()
        return Delivery(PUT_TARGET, {"id": item_id, **payload}, key, digest, updated_at)

    def _item_id(self, raw: Any) -> str:
        if blank(raw):
            raise Reject(R.MISSING_ITEM_ID, "ID is empty; every catalog row needs the id of its item")
        value = raw if type(raw) is str else self._text(raw, ITEM_ID)
        limit = self.limits.max_item_id_chars
        if len(value) > limit:
            raise Reject(
                R.ITEM_ID_TOO_LONG,
                f"ID is {len(value)} characters long; Braze catalog item ids are at most {limit} characters",
            )
        if not _ITEM_ID.fullmatch(value):
            raise Reject(
                R.INVALID_ITEM_ID,
                f"ID {quote(value)} holds characters other than letters, digits, '-' and '_'; Braze catalog item "
                "ids take only those — map the id to that alphabet in the source query",
            )
        return value

    def _deleted(self, row: Sequence[Any]) -> bool:
        if self._deleted_index is None:
            return False
        value = row[self._deleted_index]
        if value is None or type(value) is bool:
            return value is True
        raise Reject(
            R.INVALID_FIELD_TYPE,
            f"DELETED is {type_name(value)}; it must be a boolean (true deletes the item) or NULL — cast the "
            "column to BOOLEAN",
        )

    def _check(self, key: Any, value: Any, path: str, depth: int) -> None:
        """Braze's catalog rules for one field: keys without '.' or '$', strings of at most 5,000 characters,
        at most 50 levels of nesting."""
        if not isinstance(key, str) or not key or "." in key or "$" in key:
            shown = quote(key) if isinstance(key, str) else type_name(key)
            raise Reject(
                R.INVALID_KEY,
                f"{path.rpartition('.')[0] or 'PAYLOAD'} key {shown} is empty or holds '.' or '$', which Braze "
                "catalogs refuse; rename it",
            )
        self._check_value(value, path, depth)

    def _check_value(self, value: Any, path: str, depth: int) -> None:
        limits = self.limits
        kind = type(value)
        if kind is str:
            if len(value) > limits.max_catalog_value_chars:
                raise Reject(
                    R.VALUE_TOO_LONG,
                    f"{path} is a string of {len(value)} characters; a catalog value is at most "
                    f"{limits.max_catalog_value_chars} characters — shorten it",
                )
            return
        if kind is not dict and kind is not list:
            return
        if depth > limits.max_catalog_depth:
            raise Reject(
                R.NESTING_TOO_DEEP,
                f"{path} is nested more than {limits.max_catalog_depth} levels deep; flatten the value",
            )
        if kind is dict:
            for key, item in value.items():
                self._check(key, item, f"{path}.{clip(str(key))}", depth + 1)
        else:
            for index, item in enumerate(value):
                self._check_value(item, f"{path}[{index}]", depth + 1)

    def _describe(self, row: Sequence[Any]) -> str:
        """The item a row names, for error reports: best effort, never raises."""
        try:
            value = row[self._id_index]
            if not blank(value):
                return "id=" + clip(value if isinstance(value, str) else repr(value))
        except Exception:
            pass
        return ""
