"""Row validation and conversion: each reason code, identifiers per data type, payload forms, fingerprints."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cdi_operator.api.models import DataType
from cdi_operator.runner.catalog_rows import CatalogRowConverter
from cdi_operator.runner.columns import ColumnPlan, SourceColumnsError, plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.rows import Delivery, RowError, RowErrorReason, RowLimits

R = RowErrorReason
T0 = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
T0_ISO = "2026-11-28T10:00:00.123456Z"
IDENTIFIER_KEYS = {"external_id", "user_alias", "braze_id", "email", "phone"}
ALL_IDS = ["EXTERNAL_ID", "ALIAS_NAME", "ALIAS_LABEL", "BRAZE_ID", "EMAIL", "PHONE"]


def converter(data_type: DataType, columns: Sequence[str] | None = None) -> RowConverter:
    if data_type is DataType.CATALOG_ITEMS:  # test_catalog_rows.py has its own cases
        return CatalogRowConverter(plan_columns(data_type, columns or ["UPDATED_AT", "ID", "PAYLOAD", "DELETED"]))
    if columns is None:
        columns = ["UPDATED_AT", *ALL_IDS] + ([] if data_type == DataType.USER_DELETES else ["PAYLOAD"])
    return RowConverter(data_type, plan_columns(data_type, columns))


def row(conv: RowConverter, payload: Any = None, updated_at: Any = T0, **ids: Any) -> tuple[Any, ...]:
    """A row in plan order from keyword identifiers (external_id=..., alias_name=..., ...)."""
    values: list[Any] = []
    for column in conv.plan.columns:
        upper = column.upper()
        if upper == "UPDATED_AT":
            values.append(updated_at)
        elif upper == "PAYLOAD":
            values.append(payload)
        else:
            values.append(ids.get(upper.lower()))
    return tuple(values)


def ok(result: Delivery | RowError) -> Delivery:
    assert isinstance(result, Delivery), result
    return result


def err(result: Delivery | RowError) -> RowError:
    assert isinstance(result, RowError), result
    return result


ATTR = converter(DataType.CUSTOM_ATTRIBUTES)
EVENT = converter(DataType.CUSTOM_EVENTS)
PURCHASE = converter(DataType.PURCHASE_EVENTS)
DELETE = converter(DataType.USER_DELETES)
PURCHASE_OK = {"product_id": "sku-1", "currency": "usd", "price": 9.99}


# --- one case per reason code -------------------------------------------------------------------------------

REASON_CASES: list[tuple[RowErrorReason, RowConverter, dict[str, Any], Any, str, str]] = [
    # reason, converter, identifiers, payload, expected identifier, text the message must contain
    (R.MISSING_IDENTIFIER, ATTR, {"email": "  "}, "{}", "", "EXTERNAL_ID"),
    (R.ALIAS_INCOMPLETE, ATTR, {"alias_name": "n1", "braze_id": "b1"}, "{}", "alias_name=n1", "ALIAS_LABEL"),
    (
        R.UNSUPPORTED_IDENTIFIER,
        DELETE,
        {"email": "jane@example.com"},
        None,
        "email=j***@example.com",
        "EMAIL",
    ),
    (R.MISSING_PAYLOAD, ATTR, {"external_id": "u1"}, None, "external_id=u1", "PAYLOAD"),
    (R.INVALID_PAYLOAD_JSON, ATTR, {"external_id": "u1"}, '{"a": ', "external_id=u1", "PAYLOAD"),
    (R.PAYLOAD_NOT_OBJECT, ATTR, {"external_id": "u1"}, "[1, 2]", "external_id=u1", "PAYLOAD"),
    (
        R.PAYLOAD_TOO_LARGE,
        ATTR,
        {"external_id": "u1"},
        orjson.dumps({f"k{i}": "x" * 250 for i in range(4100)}).decode(),
        "external_id=u1",
        "Payload was greater than 1MB",
    ),
    (
        R.TOO_MANY_ATTRIBUTES,
        ATTR,
        {"external_id": "u1"},
        {f"k{i}": i for i in range(251)},
        "external_id=u1",
        "251",
    ),
    (R.INVALID_KEY, ATTR, {"external_id": "u1"}, '{"first name": "J"}', "external_id=u1", "'first name'"),
    (R.KEY_TOO_LONG, ATTR, {"external_id": "u1"}, {"k" * 256: 1}, "external_id=u1", "256 characters"),
    (
        R.VALUE_TOO_LONG,
        ATTR,
        {"external_id": "u1"},
        {"address": {"line1": "x" * 256}},
        "external_id=u1",
        "PAYLOAD.address.line1",
    ),
    (
        R.NESTED_ATTRIBUTE_TOO_LARGE,
        ATTR,
        {"external_id": "u1"},
        {"pets": [{"name": "x" * 200} for _ in range(600)]},
        "external_id=u1",
        "PAYLOAD.pets",
    ),
    (
        R.NESTING_TOO_DEEP,
        ATTR,
        {"external_id": "u1"},
        '{"a": ' + "[" * 40 + "]" * 40 + "}",
        "external_id=u1",
        "PAYLOAD.a",
    ),
    (
        R.IDENTIFIER_IN_PAYLOAD,
        ATTR,
        {"external_id": "u1"},
        {"external_id": "u2"},
        "external_id=u1",
        "external_id",
    ),
    (R.MISSING_EVENT_NAME, EVENT, {"external_id": "u1"}, {"time": T0_ISO}, "external_id=u1", "PAYLOAD.name"),
    (
        R.INVALID_TIME,
        EVENT,
        {"external_id": "u1"},
        {"name": "e", "time": "yesterday"},
        "external_id=u1",
        "time",
    ),
    (
        R.MISSING_PURCHASE_FIELD,
        PURCHASE,
        {"external_id": "u1"},
        {"product_id": "p", "currency": "USD"},
        "external_id=u1",
        "PAYLOAD.price",
    ),
    (
        R.INVALID_PRICE,
        PURCHASE,
        {"external_id": "u1"},
        {**PURCHASE_OK, "price": "9.99"},
        "external_id=u1",
        "PAYLOAD.price",
    ),
    (
        R.INVALID_CURRENCY,
        PURCHASE,
        {"external_id": "u1"},
        {**PURCHASE_OK, "currency": "US$"},
        "external_id=u1",
        "PAYLOAD.currency",
    ),
    (
        R.INVALID_QUANTITY,
        PURCHASE,
        {"external_id": "u1"},
        {**PURCHASE_OK, "quantity": 101},
        "external_id=u1",
        "PAYLOAD.quantity",
    ),
    (
        R.PROPERTIES_TOO_LARGE,
        EVENT,
        {"external_id": "u1"},
        {"name": "e", "properties": {"items": ["x" * 250] * 210}},
        "external_id=u1",
        "PAYLOAD.properties",
    ),
    (R.INVALID_FIELD_TYPE, ATTR, {"external_id": 1.5}, "{}", "external_id=1.5", "EXTERNAL_ID"),
]


@pytest.mark.parametrize(
    ("reason", "conv", "ids", "payload", "identifier", "named"),
    REASON_CASES,
    ids=[case[0].value for case in REASON_CASES],
)
def test_reason(
    reason: RowErrorReason, conv: RowConverter, ids: dict[str, Any], payload: Any, identifier: str, named: str
) -> None:
    error = err(conv.convert(row(conv, payload, **ids)))
    assert error.reason == reason
    assert error.identifier == identifier
    assert named in error.message
    assert error.updated_at == T0


def test_every_reason_code_has_a_case() -> None:
    covered = {case[0] for case in REASON_CASES} | {
        R.MISSING_UPDATED_AT,  # test_missing_updated_at
        R.INVALID_ROW,  # test_wrong_row_width
        R.BRAZE_REJECTED,  # set by the runner only
        R.MISSING_ITEM_ID,  # test_catalog_rows.py
        R.INVALID_ITEM_ID,
        R.ITEM_ID_TOO_LONG,
    }
    assert covered == set(RowErrorReason)


def test_reason_values_are_stable_codes() -> None:
    for reason in RowErrorReason:
        assert reason.value == reason.name
        assert str(reason) == reason.name


def test_missing_updated_at() -> None:
    error = err(ATTR.convert(row(ATTR, "{}", updated_at=None, external_id="u1")))
    assert error.reason == R.MISSING_UPDATED_AT
    assert error.identifier == "external_id=u1"
    assert "UPDATED_AT" in error.message
    assert error.updated_at is None


def test_updated_at_of_wrong_type() -> None:
    error = err(ATTR.convert(row(ATTR, "{}", updated_at="2026-11-28", external_id="u1")))
    assert error.reason == R.INVALID_FIELD_TYPE
    assert "UPDATED_AT" in error.message


def test_wrong_row_width() -> None:
    error = err(ATTR.convert((T0, "u1")))
    assert error.reason == R.INVALID_ROW
    assert "values" in error.message
    assert error.updated_at == T0


# --- identifiers --------------------------------------------------------------------------------------------

TRACK_IDS: list[tuple[dict[str, Any], dict[str, Any], str, bool]] = [
    # identifiers in the row, identifier part of the body, user_key, _update_existing_only false added
    ({"external_id": "u1"}, {"external_id": "u1"}, "e:u1", False),
    (
        {"alias_name": "n1", "alias_label": "crm"},
        {"user_alias": {"alias_name": "n1", "alias_label": "crm"}},
        "a:crm\x1fn1",
        True,
    ),
    ({"braze_id": "5f0c"}, {"braze_id": "5f0c"}, "b:5f0c", False),
    ({"email": "Jane@Example.com"}, {"email": "Jane@Example.com"}, "m:jane@example.com", True),
    ({"phone": "+15551234567"}, {"phone": "+15551234567"}, "p:+15551234567", True),
]


@pytest.mark.parametrize(("ids", "identifier_body", "user_key", "creates"), TRACK_IDS)
@pytest.mark.parametrize(
    ("conv", "payload", "target"),
    [
        (ATTR, '{"plan": "gold"}', "attributes"),
        (EVENT, '{"name": "signed_up"}', "events"),
        (PURCHASE, orjson.dumps(PURCHASE_OK).decode(), "purchases"),
    ],
    ids=["attributes", "events", "purchases"],
)
def test_track_identifiers(
    conv: RowConverter,
    payload: str,
    target: str,
    ids: dict[str, Any],
    identifier_body: dict[str, Any],
    user_key: str,
    creates: bool,
) -> None:
    delivery = ok(conv.convert(row(conv, payload, **ids)))
    assert delivery.target == target
    assert delivery.user_key == user_key
    assert delivery.updated_at == T0
    for key, value in identifier_body.items():
        assert delivery.body[key] == value
    assert {key for key in delivery.body if key in IDENTIFIER_KEYS} == set(identifier_body)
    if creates:
        assert delivery.body["_update_existing_only"] is False
    else:
        assert "_update_existing_only" not in delivery.body
    assert len(delivery.fingerprint) == 16
    int(delivery.fingerprint, 16)


@pytest.mark.parametrize(
    ("ids", "target", "body", "user_key"),
    [
        ({"external_id": "u1"}, "external_ids", "u1", "e:u1"),
        (
            {"alias_name": "n1", "alias_label": "crm"},
            "user_aliases",
            {"alias_name": "n1", "alias_label": "crm"},
            "a:crm\x1fn1",
        ),
        ({"braze_id": "5f0c"}, "braze_ids", "5f0c", "b:5f0c"),
        ({"braze_id": "5f0c", "email": "j@example.com"}, "braze_ids", "5f0c", "b:5f0c"),
    ],
)
def test_delete_identifiers(ids: dict[str, Any], target: str, body: Any, user_key: str) -> None:
    delivery = ok(DELETE.convert(row(DELETE, **ids)))
    assert (delivery.target, delivery.body, delivery.user_key) == (target, body, user_key)


def test_delete_by_phone_is_unsupported_and_masked() -> None:
    error = err(DELETE.convert(row(DELETE, phone="+15551234567")))
    assert error.reason == R.UNSUPPORTED_IDENTIFIER
    assert error.identifier == "phone=***67"
    assert "1234567" not in error.message


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (
            {"external_id": "u1", "alias_name": "n", "alias_label": "l", "braze_id": "b", "email": "e@x.io"},
            "e:u1",
        ),
        ({"external_id": " ", "alias_name": "n", "alias_label": "l", "braze_id": "b"}, "a:l\x1fn"),
        ({"external_id": "", "braze_id": "b", "email": "e@x.io", "phone": "+1"}, "b:b"),
        ({"email": "E@x.io", "phone": "+15550000000"}, "m:e@x.io"),  # email wins over phone
        ({"email": "\t", "phone": "+15550000000"}, "p:+15550000000"),
        ({"external_id": "u1", "alias_name": "only-name"}, "e:u1"),  # alias ignored when external_id wins
        ({"external_id": 42}, "e:42"),
        ({"external_id": Decimal("42")}, "e:42"),
    ],
)
def test_identifier_precedence(ids: dict[str, Any], expected: str) -> None:
    assert ok(ATTR.convert(row(ATTR, "{}", **ids))).user_key == expected


def test_integer_identifier_becomes_text() -> None:
    delivery = ok(ATTR.convert(row(ATTR, "{}", external_id=42)))
    assert delivery.body["external_id"] == "42"


@pytest.mark.parametrize("value", [True, 1.0, Decimal("1.5"), b"u1", ["u1"]])
def test_identifier_of_wrong_type(value: Any) -> None:
    error = err(ATTR.convert(row(ATTR, "{}", external_id=value)))
    assert error.reason == R.INVALID_FIELD_TYPE
    assert "EXTERNAL_ID" in error.message


def test_identifier_too_long() -> None:
    error = err(ATTR.convert(row(ATTR, "{}", braze_id="b" * 256)))
    assert error.reason == R.VALUE_TOO_LONG
    assert "BRAZE_ID" in error.message
    assert error.identifier.startswith("braze_id=bbbb") and error.identifier.endswith("…")


def test_alias_incomplete_label_only() -> None:
    error = err(EVENT.convert(row(EVENT, '{"name": "e"}', alias_label="crm")))
    assert error.reason == R.ALIAS_INCOMPLETE
    assert error.identifier == "alias_label=crm"
    assert "ALIAS_NAME" in error.message


def test_email_masked_in_errors() -> None:
    error = err(ATTR.convert(row(ATTR, "[]", email="jane.doe@example.com")))
    assert error.identifier == "email=j***@example.com"
    assert "jane.doe" not in error.message


# --- attributes ---------------------------------------------------------------------------------------------


def test_attributes_body_keeps_nulls_nested_and_operators() -> None:
    payload = {
        "plan": None,
        "address": {"city": "Zürich", "moved": {"$time": "2026-01-01T00:00:00Z"}},
        "pets": {"$update": [{"$identifier_key": "id", "$identifier_value": 4, "$new_object": {"age": 5}}]},
        "toys": {"$add": [{"id": 1}], "$remove": [{"$identifier_key": "id", "$identifier_value": 2}]},
        "_merge_objects": True,
        "email": "jane@example.com",  # a plain attribute when the row is identified by external_id
        "phone": "+15551234567",
    }
    delivery = ok(ATTR.convert(row(ATTR, orjson.dumps(payload), external_id="u1")))
    assert delivery.body == {**payload, "external_id": "u1"}


def test_empty_attributes_payload_is_delivered() -> None:
    delivery = ok(ATTR.convert(row(ATTR, "{}", alias_name="n", alias_label="l")))
    assert delivery.body == {
        "user_alias": {"alias_name": "n", "alias_label": "l"},
        "_update_existing_only": False,
    }


def test_payload_may_set_update_existing_only() -> None:
    delivery = ok(ATTR.convert(row(ATTR, '{"_update_existing_only": true}', email="a@b.io")))
    assert delivery.body["_update_existing_only"] is True


@pytest.mark.parametrize(
    ("ids", "payload", "conflict"),
    [
        ({"external_id": "u1"}, {"braze_id": "b"}, True),
        ({"external_id": "u1"}, {"user_alias": {"alias_name": "n", "alias_label": "l"}}, True),
        ({"email": "a@b.io"}, {"email": "other@b.io"}, True),
        ({"email": "a@b.io"}, {"email": "A@B.io"}, False),
        ({"email": "a@b.io"}, {"phone": "+1555"}, False),
        ({"phone": "+1555"}, {"email": "a@b.io"}, True),
        ({"phone": "+1555"}, {"phone": "+1666"}, True),
        ({"braze_id": "b"}, {"email": "a@b.io", "phone": "+1"}, False),
    ],
)
def test_identifier_in_attributes_payload(ids: dict[str, Any], payload: dict[str, Any], conflict: bool) -> None:
    result = ATTR.convert(row(ATTR, payload, **ids))
    if conflict:
        error = err(result)
        assert error.reason == R.IDENTIFIER_IN_PAYLOAD
        assert next(iter(payload)) in error.message
    else:
        ok(result)


@pytest.mark.parametrize(
    ("payload", "reason", "named"),
    [
        ({"a.b": 1}, R.INVALID_KEY, "'a.b'"),
        ({"$add": [1]}, R.INVALID_KEY, "'$add'"),  # operators only below the top level
        ({"cost$": 1}, R.INVALID_KEY, "'cost$'"),
        ({"": 1}, R.INVALID_KEY, "empty key"),
        ({"tab\there": 1}, R.INVALID_KEY, "control"),
        ({"a": {"b c": 1}}, R.INVALID_KEY, "PAYLOAD.a key 'b c'"),
        ({"a": [{"$date": "x"}]}, R.INVALID_KEY, "PAYLOAD.a[0] key '$date'"),
        ({"a": [{"k" * 256: 1}]}, R.KEY_TOO_LONG, "PAYLOAD.a[0]"),
        ({"a": ["ok", "x" * 256]}, R.VALUE_TOO_LONG, "PAYLOAD.a[1]"),
        ({"_merge_objects": "yes"}, R.INVALID_FIELD_TYPE, "_merge_objects"),
    ],
)
def test_attribute_key_and_value_checks(payload: dict[str, Any], reason: RowErrorReason, named: str) -> None:
    error = err(ATTR.convert(row(ATTR, payload, external_id="u1")))
    assert error.reason == reason
    assert named in error.message


def test_unicode_lengths_count_characters() -> None:
    key = "名" * 255
    value = "é" * 255  # 510 bytes in UTF-8, still 255 characters
    ok(ATTR.convert(row(ATTR, orjson.dumps({key: value, "emoji": "😀" * 255}), external_id="ü")))
    error = err(ATTR.convert(row(ATTR, {"名前": "é" * 256}, external_id="u1")))
    assert error.reason == R.VALUE_TOO_LONG
    assert "PAYLOAD.名前" in error.message and "256 characters" in error.message
    assert err(ATTR.convert(row(ATTR, {"名" * 256: 1}, external_id="u1"))).reason == R.KEY_TOO_LONG


def test_limits_are_configurable() -> None:
    conv = RowConverter(
        DataType.CUSTOM_ATTRIBUTES,
        plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"]),
        limits=RowLimits(max_payload_bytes=20),
    )
    assert err(conv.convert((T0, "u1", '{"a": "0123456789abcdef"}'))).reason == R.PAYLOAD_TOO_LARGE


# --- events and purchases -----------------------------------------------------------------------------------


def test_event_time_defaults_to_updated_at() -> None:
    delivery = ok(EVENT.convert(row(EVENT, '{"name": "opened", "properties": {"n": 1}}', external_id="u1")))
    assert delivery.body == {"external_id": "u1", "name": "opened", "time": T0_ISO, "properties": {"n": 1}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-11-27T08:00:00Z", "2026-11-27T08:00:00.000000Z"),
        ("2026-11-27T10:00:00+02:00", "2026-11-27T08:00:00.000000Z"),
        ("2026-11-27T08:00:00.5", "2026-11-27T08:00:00.500000Z"),  # no offset: UTC
        (None, T0_ISO),  # null means absent
    ],
)
def test_event_time_is_normalised(given: Any, expected: str) -> None:
    delivery = ok(EVENT.convert(row(EVENT, {"name": "e", "time": given}, external_id="u1")))
    assert delivery.body["time"] == expected


@pytest.mark.parametrize("given", ["2026-11-27", 1764230400, "27/11/2026 08:00", ""])
def test_event_time_invalid(given: Any) -> None:
    error = err(EVENT.convert(row(EVENT, {"name": "e", "time": given}, external_id="u1")))
    assert error.reason == R.INVALID_TIME
    assert "PAYLOAD.time" in error.message


def test_naive_and_offset_updated_at_become_utc() -> None:
    naive = ok(EVENT.convert(row(EVENT, '{"name": "e"}', updated_at=T0.replace(tzinfo=None), external_id="u1")))
    assert naive.updated_at == T0 and naive.updated_at.tzinfo is UTC
    assert naive.body["time"] == T0_ISO
    paris = T0.astimezone(timezone(timedelta(hours=1)))
    shifted = ok(EVENT.convert(row(EVENT, '{"name": "e"}', updated_at=paris, external_id="u1")))
    assert shifted.updated_at.tzinfo is UTC and shifted.body["time"] == T0_ISO


@pytest.mark.parametrize(
    ("payload", "reason", "named"),
    [
        ({"name": "  "}, R.MISSING_EVENT_NAME, "PAYLOAD.name"),
        ({"name": 7}, R.INVALID_FIELD_TYPE, "PAYLOAD.name"),
        ({"name": "e", "colour": "red"}, R.INVALID_KEY, "'colour'"),
        ({"name": "e", "email": "a@b.io"}, R.IDENTIFIER_IN_PAYLOAD, "'email'"),
        ({"name": "e", "app_id": 5}, R.INVALID_FIELD_TYPE, "PAYLOAD.app_id"),
        ({"name": "e", "properties": [1]}, R.INVALID_FIELD_TYPE, "PAYLOAD.properties"),
        ({"name": "e", "properties": {"a b": 1}}, R.INVALID_KEY, "PAYLOAD.properties key 'a b'"),
        ({"name": "e", "properties": {"s": "x" * 256}}, R.VALUE_TOO_LONG, "PAYLOAD.properties.s"),
        ({"name": "e", "_update_existing_only": 0}, R.INVALID_FIELD_TYPE, "_update_existing_only"),
    ],
)
def test_event_checks(payload: dict[str, Any], reason: RowErrorReason, named: str) -> None:
    error = err(EVENT.convert(row(EVENT, payload, external_id="u1")))
    assert error.reason == reason
    assert named in error.message


def test_large_flat_properties_are_allowed() -> None:
    properties = {f"p{i}": "x" * 250 for i in range(300)}  # > 50 KB but no arrays or objects
    ok(EVENT.convert(row(EVENT, {"name": "e", "properties": properties}, external_id="u1")))


def test_purchase_body() -> None:
    payload = {**PURCHASE_OK, "quantity": 2, "app_id": "app", "properties": {"size": "M"}}
    delivery = ok(PURCHASE.convert(row(PURCHASE, orjson.dumps(payload), alias_name="n", alias_label="l")))
    assert delivery.body == {
        "user_alias": {"alias_name": "n", "alias_label": "l"},
        "_update_existing_only": False,
        "product_id": "sku-1",
        "currency": "USD",
        "price": 9.99,
        "quantity": 2,
        "app_id": "app",
        "properties": {"size": "M"},
        "time": T0_ISO,
    }


@pytest.mark.parametrize(
    ("change", "reason", "named"),
    [
        ({"product_id": None}, R.MISSING_PURCHASE_FIELD, "PAYLOAD.product_id"),
        ({"product_id": 12}, R.INVALID_FIELD_TYPE, "PAYLOAD.product_id"),
        ({"currency": None}, R.MISSING_PURCHASE_FIELD, "PAYLOAD.currency"),
        ({"currency": "EURO"}, R.INVALID_CURRENCY, "PAYLOAD.currency"),
        ({"currency": 978}, R.INVALID_CURRENCY, "PAYLOAD.currency"),
        ({"price": True}, R.INVALID_PRICE, "PAYLOAD.price"),
        ({"quantity": 0}, R.INVALID_QUANTITY, "PAYLOAD.quantity"),
        ({"quantity": 2.0}, R.INVALID_QUANTITY, "PAYLOAD.quantity"),
        ({"quantity": True}, R.INVALID_QUANTITY, "PAYLOAD.quantity"),
        ({"time": "soon"}, R.INVALID_TIME, "PAYLOAD.time"),
        ({"sku": "x"}, R.INVALID_KEY, "'sku'"),
        ({"external_id": "u2"}, R.IDENTIFIER_IN_PAYLOAD, "'external_id'"),
    ],
)
def test_purchase_checks(change: dict[str, Any], reason: RowErrorReason, named: str) -> None:
    error = err(PURCHASE.convert(row(PURCHASE, {**PURCHASE_OK, **change}, external_id="u1")))
    assert error.reason == reason
    assert named in error.message


def test_purchase_integer_and_negative_price() -> None:
    assert ok(PURCHASE.convert(row(PURCHASE, {**PURCHASE_OK, "price": 10}, external_id="u1"))).body["price"] == 10
    assert ok(PURCHASE.convert(row(PURCHASE, {**PURCHASE_OK, "price": -5.0}, external_id="u1"))).body["price"] == -5.0


# --- payload forms ------------------------------------------------------------------------------------------


def test_payload_as_str_bytes_and_native_dict_give_the_same_body() -> None:
    payload = {"b": 1, "a": {"x": [1, 2]}, "c": None}
    text = ok(ATTR.convert(row(ATTR, orjson.dumps(payload).decode(), external_id="u1")))
    raw = ok(ATTR.convert(row(ATTR, orjson.dumps(payload), external_id="u1")))
    native = ok(ATTR.convert(row(ATTR, dict(payload), external_id="u1")))
    assert text.body == raw.body == native.body
    assert text.fingerprint == raw.fingerprint  # same bytes


def test_native_values_become_json() -> None:
    payload = {
        "ltv": Decimal("12.50"),
        "visits": Decimal("7"),
        "seen": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "born": date(1990, 5, 6),
        "id": uuid.UUID(int=1),
        "tags": ("a", "b"),
    }
    delivery = ok(ATTR.convert(row(ATTR, payload, external_id="u1")))
    assert delivery.body == {
        "external_id": "u1",
        "ltv": 12.5,
        "visits": 7,
        "seen": "2026-01-02T03:04:05.000000Z",
        "born": "1990-05-06",
        "id": "00000000-0000-0000-0000-000000000001",
        "tags": ["a", "b"],
    }
    orjson.dumps(delivery.body)


def test_native_payload_is_not_mutated() -> None:
    payload = {"a": 1}
    ok(ATTR.convert(row(ATTR, payload, email="a@b.io")))
    assert payload == {"a": 1}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"score": math.nan}, R.INVALID_FIELD_TYPE),
        ({"score": Decimal("Infinity")}, R.INVALID_FIELD_TYPE),
        ({"blob": b"\x00"}, R.INVALID_FIELD_TYPE),
        ({"big": 2**70}, R.INVALID_FIELD_TYPE),
        ({1: "a"}, R.INVALID_KEY),
        ([1, 2], R.PAYLOAD_NOT_OBJECT),
        ("", R.MISSING_PAYLOAD),
        (b"\xff\xfe", R.INVALID_PAYLOAD_JSON),
        ("null", R.PAYLOAD_NOT_OBJECT),
        (42, R.PAYLOAD_NOT_OBJECT),
    ],
)
def test_odd_payloads(payload: Any, reason: RowErrorReason) -> None:
    error = err(ATTR.convert(row(ATTR, payload, external_id="u1")))
    assert error.reason == reason
    assert "PAYLOAD" in error.message


# --- fingerprints -------------------------------------------------------------------------------------------


def test_fingerprint_stable_and_sensitive() -> None:
    base = ok(ATTR.convert(row(ATTR, '{"a": 1}', external_id="u1"))).fingerprint
    assert ok(ATTR.convert(row(ATTR, '{"a": 1}', external_id="u1"))).fingerprint == base
    later = ok(ATTR.convert(row(ATTR, '{"a": 1}', updated_at=T0 + timedelta(1), external_id="u1")))
    assert later.fingerprint == base  # UPDATED_AT is paired with the fingerprint by the frontier, not inside it
    others = {
        ok(ATTR.convert(row(ATTR, '{"a": 2}', external_id="u1"))).fingerprint,
        ok(ATTR.convert(row(ATTR, '{"a": 1}', external_id="u2"))).fingerprint,
        ok(ATTR.convert(row(ATTR, '{"a": 1}', braze_id="u1"))).fingerprint,
        ok(ATTR.convert(row(ATTR, '{"a": 1}', email="U1@x.io"))).fingerprint,
        ok(ATTR.convert(row(ATTR, '{"a": 1}', email="u1@x.io"))).fingerprint,
    }
    assert base not in others and len(others) == 5


def test_native_fingerprint_ignores_key_order() -> None:
    one = ok(ATTR.convert(row(ATTR, {"a": 1, "b": 2}, external_id="u1")))
    two = ok(ATTR.convert(row(ATTR, {"b": 2, "a": 1}, external_id="u1")))
    three = ok(ATTR.convert(row(ATTR, {"b": 3, "a": 1}, external_id="u1")))
    assert one.fingerprint == two.fingerprint != three.fingerprint


def test_delete_fingerprint() -> None:
    one = ok(DELETE.convert(row(DELETE, external_id="u1")))
    assert one.fingerprint == ok(DELETE.convert(row(DELETE, external_id="u1"))).fingerprint
    assert one.fingerprint != ok(DELETE.convert(row(DELETE, external_id="u2"))).fingerprint


# --- column planning ----------------------------------------------------------------------------------------


def test_plan_matches_case_insensitively_and_orders_columns() -> None:
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["payload", "Email", "other", "updated_at", "External_Id"])
    assert plan.columns == ("updated_at", "External_Id", "Email", "payload")
    assert (plan.external_id, plan.email, plan.payload, plan.phone) == (1, 2, 3, None)
    assert isinstance(plan, ColumnPlan)
    conv = RowConverter(DataType.CUSTOM_ATTRIBUTES, plan)
    assert ok(conv.convert((T0, None, "a@b.io", "{}"))).user_key == "m:a@b.io"


def test_plan_for_deletes_has_no_payload() -> None:
    plan = plan_columns(DataType.USER_DELETES, ["UPDATED_AT", "BRAZE_ID", "EMAIL"])
    assert plan.columns == ("UPDATED_AT", "BRAZE_ID", "EMAIL")
    assert plan.payload is None


@pytest.mark.parametrize(
    ("data_type", "columns", "named"),
    [
        (DataType.CUSTOM_ATTRIBUTES, ["EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT"),
        (DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "PAYLOAD"], "no identifier column"),
        (DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "ALIAS_NAME", "PAYLOAD"], "ALIAS_LABEL"),
        (DataType.CUSTOM_EVENTS, ["UPDATED_AT", "ALIAS_LABEL", "PAYLOAD"], "ALIAS_NAME"),
        (DataType.PURCHASE_EVENTS, ["UPDATED_AT", "EXTERNAL_ID"], "PAYLOAD is missing"),
        (DataType.USER_DELETES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "not allowed for userDeletes"),
        (DataType.USER_DELETES, ["UPDATED_AT", "EMAIL", "PHONE"], "cannot delete by EMAIL or PHONE"),
        (
            DataType.CUSTOM_ATTRIBUTES,
            ["UPDATED_AT", "payload", "PAYLOAD", "EXTERNAL_ID"],
            "both match PAYLOAD",
        ),
    ],
)
def test_plan_errors(data_type: DataType, columns: list[str], named: str) -> None:
    with pytest.raises(SourceColumnsError) as caught:
        plan_columns(data_type, columns)
    assert any(named in problem for problem in caught.value.problems)
    assert named in str(caught.value)


def test_plan_reports_every_problem() -> None:
    with pytest.raises(SourceColumnsError) as caught:
        plan_columns(DataType.CUSTOM_EVENTS, ["ALIAS_NAME"])
    assert len(caught.value.problems) == 3  # UPDATED_AT, ALIAS_LABEL, PAYLOAD


# --- a row never raises -------------------------------------------------------------------------------------


class Weird:
    def __str__(self) -> str:
        raise RuntimeError("boom")

    def __repr__(self) -> str:
        raise RuntimeError("boom")


ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    "\x00",
    "\ud800",
    0,
    -1,
    2**80,
    True,
    1.5,
    math.nan,
    Decimal("NaN"),
    b"",
    b"\xff",
    bytearray(b"{}"),
    memoryview(b'{"a": 1}'),
    [],
    {},
    {"": None},
    {"a": {"b": {"c": [[[]]]}}},
    date(2026, 1, 1),
    datetime(2026, 1, 1),
    T0,
    Weird(),
    object(),
    "{" * 5000,
    "[" * 5000 + "]" * 5000,
    '{"a": ' * 2000 + "1" + "}" * 2000,
]


@pytest.mark.parametrize("data_type", list(DataType))
@pytest.mark.parametrize("position", range(8))
def test_a_row_never_raises(data_type: DataType, position: int) -> None:
    conv = converter(data_type)
    width = len(conv.plan.columns)
    base: list[Any] = [T0, "u1", "n", "l", "b", "a@b.io", "+1555", '{"name": "e"}'][:width]
    for odd in ODD_VALUES:
        values = list(base)
        if position < width:
            values[position] = odd
        result = conv.convert(tuple(values))
        assert isinstance(result, Delivery | RowError)
        if isinstance(result, RowError):
            assert result.message
            assert isinstance(result.identifier, str)
        else:
            orjson.dumps(result.body)
    for bad_row in [(), (T0,), (*base, None)]:
        assert isinstance(conv.convert(bad_row), RowError)
