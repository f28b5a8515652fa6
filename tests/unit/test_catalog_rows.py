"""Catalog rows (catalogItems): the column plan, each catalog check, deletes, and a later row for one id winning."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cdi_operator.api.models import DataType
from cdi_operator.runner.catalog_rows import DELETE_TARGET, PUT_TARGET, CatalogRowConverter
from cdi_operator.runner.columns import SourceColumnsError, plan_columns
from cdi_operator.runner.rows import Delivery, RowError, RowErrorReason
from cdi_operator.runner.values import clip

R = RowErrorReason
T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
CONVERTER = CatalogRowConverter(plan_columns(DataType.CATALOG_ITEMS, ["updated_at", "Id", "PAYLOAD", "DELETED", "x"]))


def convert(item_id: Any, payload: Any, deleted: Any = None, conv: CatalogRowConverter = CONVERTER) -> Any:
    return conv.convert((T0, item_id, payload, deleted))


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_plan_reads_id_payload_and_deleted_only() -> None:
    plan = plan_columns(DataType.CATALOG_ITEMS, ["UPDATED_AT", "EXTERNAL_ID", "ID", "PAYLOAD", "DELETED"])
    assert plan.columns == ("UPDATED_AT", "ID", "PAYLOAD", "DELETED")
    assert plan_columns(DataType.CATALOG_ITEMS, ["UPDATED_AT", "ID", "PAYLOAD"]).deleted is None


def test_plan_names_missing_columns() -> None:
    with pytest.raises(SourceColumnsError) as raised:
        plan_columns(DataType.CATALOG_ITEMS, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    assert raised.value.problems == ["column ID is missing; add an ID column holding each catalog item's id"]


def test_item_with_fields() -> None:
    delivery = convert("sku_1-A", '{"name": "Lamp", "price": 9.5, "tags": ["a"], "id": "sku_1-A"}')
    assert isinstance(delivery, Delivery)
    assert (delivery.target, delivery.body) == (
        PUT_TARGET,
        {"id": "sku_1-A", "name": "Lamp", "price": 9.5, "tags": ["a"]},
    )
    assert delivery.user_key == "i:sku_1-A"


def test_native_payload_and_integer_id() -> None:
    delivery = convert(42, {"spec": {"size": 3}})
    assert isinstance(delivery, Delivery)
    assert delivery.body == {"id": "42", "spec": {"size": 3}}


def test_deleted_row_needs_no_payload() -> None:
    delivery = convert("sku-1", None, True)
    assert isinstance(delivery, Delivery)
    assert (delivery.target, delivery.body) == (DELETE_TARGET, {"id": "sku-1"})
    assert isinstance(convert("sku-1", "{}", False), Delivery)


def test_fingerprint_tells_a_delete_from_a_put() -> None:
    put, delete = convert("sku-1", "{}"), convert("sku-1", None, True)
    assert put.fingerprint != delete.fingerprint


CASES = [
    # id, payload, deleted, reason, text the message names
    (None, "{}", None, R.MISSING_ITEM_ID, "ID"),
    ("  ", "{}", None, R.MISSING_ITEM_ID, "ID"),
    ("sku 1", "{}", None, R.INVALID_ITEM_ID, "letters, digits"),
    ("sku.1", "{}", None, R.INVALID_ITEM_ID, "'sku.1'"),
    ("x" * 251, "{}", None, R.ITEM_ID_TOO_LONG, "250"),
    ("sku-1", '{"a.b": 1}', None, R.INVALID_KEY, "'a.b'"),
    ("sku-1", {"spec": {"$x": 1}}, None, R.INVALID_KEY, "PAYLOAD.spec key '$x'"),
    ("sku-1", {"text": "y" * 5001}, None, R.VALUE_TOO_LONG, "5000"),
    ("sku-1", {"list": [{"t": "y" * 5001}]}, None, R.VALUE_TOO_LONG, "PAYLOAD.list[0].t"),
    ("sku-1", {"deep": nested(51)}, None, R.NESTING_TOO_DEEP, "50 levels"),
    ("sku-1", {"id": "other"}, None, R.IDENTIFIER_IN_PAYLOAD, "ID column"),
    ("sku-1", None, None, R.MISSING_PAYLOAD, "PAYLOAD"),
    ("sku-1", "[1]", None, R.PAYLOAD_NOT_OBJECT, "PAYLOAD"),
    ("sku-1", "{}", "yes", R.INVALID_FIELD_TYPE, "DELETED"),
]


@pytest.mark.parametrize(("item_id", "payload", "deleted", "reason", "named"), CASES, ids=[c[3].value for c in CASES])
def test_row_errors(item_id: Any, payload: Any, deleted: Any, reason: RowErrorReason, named: str) -> None:
    error = convert(item_id, payload, deleted)
    assert isinstance(error, RowError), error
    assert error.reason is reason
    assert named in error.message
    assert error.updated_at == T0
    assert error.identifier == ("" if item_id is None or not str(item_id).strip() else f"id={clip(item_id)}")


def test_limits_are_inclusive() -> None:
    assert isinstance(convert("x" * 250, {"text": "y" * 5000, "deep": nested(50)}), Delivery)


def test_rows_of_every_width_are_checked() -> None:
    error = CONVERTER.convert((T0, "sku-1"))
    assert isinstance(error, RowError) and error.reason is R.INVALID_ROW
