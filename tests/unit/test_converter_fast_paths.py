"""RowConverter's fast paths: the same Deliveries, fingerprints and RowErrors as its general path, row for row."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cdi_operator.api.models import DataType
from cdi_operator.runner.columns import plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.rows import Delivery, RowError, RowLimits

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
ATTRIBUTES = DataType.CUSTOM_ATTRIBUTES
COLUMNS = ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"]

# Computed by the converter before it had fast paths: watermarks saved since hold these, so they never change.
GOLDEN_FINGERPRINTS: list[tuple[DataType, list[str], tuple[Any, ...], str]] = [
    (ATTRIBUTES, COLUMNS, ("user-1", '{"first_name":"Ada","logins":3}'), "b87ed242b5451095"),
    (ATTRIBUTES, COLUMNS, ("user-1", '{"first_name": "Zoë", "tags": ["a", "b"]}'), "6a18c2cff230fc7b"),
    (ATTRIBUTES, COLUMNS, ("josé", '{"city":"Berlin"}'), "867d59d62125a9e3"),
    (ATTRIBUTES, COLUMNS, ("user-1", b'{"city":"Berlin"}'), "6394ee88538af44f"),
    (ATTRIBUTES, COLUMNS, ("user-1", {"b": 1, "a": "x"}), "7dd979689702b93b"),
    (ATTRIBUTES, ["UPDATED_AT", "EMAIL", "PAYLOAD"], ("Jane@Example.com", '{"a":1}'), "719de1a3ea6d21a3"),
    (
        DataType.CUSTOM_EVENTS,
        COLUMNS,
        ("user-1", '{"name":"played","properties":{"level":3}}'),
        "a1a5108177a79d03",
    ),
    (
        DataType.PURCHASE_EVENTS,
        COLUMNS,
        ("user-1", '{"product_id":"sku-1","currency":"usd","price":9.99}'),
        "eddbd4ccf33d9a33",
    ),
    (DataType.USER_DELETES, ["UPDATED_AT", "EXTERNAL_ID"], ("user-1",), "9dc8952d91083558"),
]


@pytest.mark.parametrize(("data_type", "columns", "values", "fingerprint"), GOLDEN_FINGERPRINTS)
def test_fingerprints_are_those_of_earlier_versions(
    data_type: DataType, columns: list[str], values: tuple[Any, ...], fingerprint: str
) -> None:
    converter = RowConverter(data_type, plan_columns(data_type, columns))
    for _ in range(3):  # the first row of a shape may take the general path, the next ones a fast path
        result = converter.convert((T0, *values))
        assert isinstance(result, Delivery), result
        assert result.fingerprint == fingerprint


def general(converter: RowConverter) -> RowConverter:
    """`converter` with its fast paths turned off: the reference they must agree with."""
    converter._plain = None
    return converter


def outcome(result: Delivery | RowError) -> tuple[Any, ...]:
    if isinstance(result, Delivery):
        # the body's key order is part of the request Braze gets, its repr tells a tuple from a list
        return ("delivery", result.target, orjson.dumps(result.body), repr(result.body), result.user_key,
                result.fingerprint, result.updated_at, result.updated_at.tzinfo is UTC)  # fmt: skip
    return ("error", result.reason, result.message, result.identifier, result.updated_at)


def payloads() -> list[Any]:
    long_text = "v" * 256
    limit_text = "v" * 255
    texts = [
        "{}",
        '{"first_name":"Ada","logins":3,"vip":true,"ltv":12.5,"note":null}',
        '{"first_name": "Ada", "last_name": "Lovelace"}',
        '  {"a":"x"}  ',
        '{"k":"' + limit_text + '"}',  # the longest string value the compact text of one key can hold
        '{"k":"' + long_text + '"}',
        '{"a":1,"k":"' + limit_text + '"}',
        '{"a":1,"k":"' + long_text + '"}',
        '{"k": "' + long_text + '"}',
        '{"k":"' + "\\u00e9" * 255 + '"}',  # escapes: more text than characters
        '{"k":"' + "\\u00e9" * 256 + '"}',
        '{"k":"' + '\\"' * 256 + '"}',
        '{"k":"' + "é" * 255 + '"}',
        '{"k":"' + "é" * 256 + '"}',
        '{"k":"{' + "v" * 255 + '"}',  # a brace inside a string
        '{"k":"[' + "v" * 255 + '"}',
        '{"tags":["a","' + long_text + '"]}',
        '{"tags":["a","b"],"k":"' + long_text + '"}',
        '{"prefs":{"x":{"y":[1,2]}}}',
        '{"prefs":{"a b":1}}',
        '{"prefs":{"$add":[1]}}',
        '{"big":["' + "w" * 250 + '"' + ',"w"' * 400 + "]}",
        '{"a":1,"a":"' + long_text + '"}',  # a duplicate key: the last one wins
        '{"a":"' + long_text + '","a":1}',
        '{"email":"jane@example.com","phone":"+15551234567"}',
        '{"email":"JANE@example.com"}',
        '{"email":"other@example.com","a":1}',
        '{"email":5}',
        '{"phone":"+15551234567"}',
        '{"phone":"+1999","a":1}',
        '{"external_id":"x"}',
        '{"braze_id":"x"}',
        '{"user_alias":{"alias_name":"n","alias_label":"l"}}',
        '{"_update_existing_only":false}',
        '{"_update_existing_only":"yes"}',
        '{"_merge_objects":true,"prefs":{"a":1}}',
        '{"a b":1}',
        '{"a.b":1}',
        '{"$add":1}',
        '{"":1}',
        '{"' + "k" * 256 + '":1}',
        '{"\\u0001":1}',
        '{"café":"Zoë"}',
        '{"k":"\ud800"}',
        "[1]",
        "null",
        '"s"',
        "",
        "   ",
        "{bad",
        '{"k":' + "[" * 40 + "]" * 40 + "}",
        '{"k":"' + "v" * 999_990 + '"}',
        "{" + ",".join(f'"k{i}":{i}' for i in range(251)) + "}",
    ]
    return [
        *texts,
        *(text.encode() for text in texts if "\ud800" not in text),
        {"a": 1, "b": "x"},
        {"b": True, "a": None, "c": 1.5, "d": "Zoë"},  # sorted for the fingerprint
        {"a": Decimal("1.5"), "when": T0},
        {"when": T0},
        {"id": uuid.UUID(int=1)},
        {"k": "v" * 255},
        {"k": "v" * 256},
        {"k": 2**64 - 1, "j": -(2**63)},
        {"k": 2**64},
        {"k": -(2**63) - 1},
        {"k": math.nan},
        {"k": math.inf},
        {"k": (1, 2)},
        {"k": {"x": [1]}},
        {"k": {"a b": 1}},
        {1: "a"},
        {"a b": 1},
        {"email": "jane@example.com"},
        {"external_id": "x"},
        {"_update_existing_only": False},
        {f"k{i}": i for i in range(251)},
        {"k": "v" * 250, **{f"k{i}": "v" * 250 for i in range(4100)}},  # over 1 MB as JSON
        None,
        5,
    ]


def event_payloads() -> list[Any]:
    long_text = "v" * 256
    return [
        '{"name":"played"}',
        '{"name":"played","time":"2026-11-28T12:00:00+02:00","app_id":"app","_update_existing_only":true}',
        '{"name":"played","properties":{"level":3,"tags":["a","b"],"when":{"$time":"2026-01-01T00:00:00Z"}}}',
        '{"name":"played","properties":{"a b":1}}',
        '{"name":"played","properties":{"$add":1}}',
        '{"name":"played","properties":{"k":"' + long_text + '"}}',
        '{"name":"played","properties":{"big":["' + "w" * 250 + '"' + ',"w"' * 250 + "]}}",
        '{"name":"played","properties":[]}',
        '{"name":"played","time":"2026-11-28"}',
        '{"name":"played","time":5}',
        '{"name":"played","extra":1}',
        '{"name":"played","email":"jane@example.com"}',
        '{"name":"played","_update_existing_only":"no"}',
        '{"name":"' + long_text + '"}',
        '{"name":""}',
        '{"name":5}',
        "{}",
        '{"name":"Zoë","properties":{"café":"é"}}',
        "[1]",
        "{bad",
    ]


def purchase_payloads() -> list[Any]:
    return [
        '{"product_id":"sku-1","currency":"usd","price":9.99}',
        '{"product_id":"sku-1","currency":"EUR","price":-5,"quantity":100,"properties":{"color":"red"}}',
        '{"product_id":"sku-1","currency":"EUR","price":1,"quantity":0}',
        '{"product_id":"sku-1","currency":"EUR","price":1,"quantity":2.0}',
        '{"product_id":"sku-1","currency":"EURO","price":1}',
        '{"product_id":"sku-1","currency":"U$D","price":1}',
        '{"product_id":"sku-1","currency":"usd","price":"9.99"}',
        '{"product_id":"sku-1","currency":"usd","price":true}',
        '{"product_id":"sku-1","currency":"usd"}',
        '{"product_id":" ","currency":"usd","price":1}',
        '{"product_id":5,"currency":"usd","price":1}',
        '{"product_id":"sku-1","currency":"usd","price":1,"time":"2026-11-28T10:00:00"}',
        '{"product_id":"sku-1","currency":"usd","price":1,"name":"x"}',
        '{"product_id":"sku-1","currency":"usd","price":1,"properties":{"k":"' + "v" * 256 + '"}}',
        "{}",
    ]


def identifiers() -> list[Any]:
    return ["u1", "user-42", "josé", "", "  ", "v" * 255, "v" * 256, 7, Decimal("7"), 7.5, None, "\ud800", b"u1"]


def updated_ats() -> list[Any]:
    return [
        T0,
        datetime(2026, 1, 1, 12, 30),  # naive: taken as UTC
        datetime(2026, 1, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        None,
        "2026-01-01",
    ]


OTHER_IDENTIFIERS = [None, "jane@example.com", "Jane@Example.com", "+15551234567", "", "n1", "l1", 5]


def rows(columns: Sequence[str], payloads: list[Any]) -> list[tuple[Any, ...]]:
    """Rows in `columns` order: the first identifier column takes each of `identifiers()`, the other identifier
    columns and UPDATED_AT a rotation of values."""
    out: list[tuple[Any, ...]] = []
    count = 0
    times = updated_ats()
    for payload in payloads:
        for identifier in identifiers():
            count += 1
            values: list[Any] = []
            for column in columns:
                if column == "UPDATED_AT":
                    values.append(times[count % len(times)])
                elif column == "PAYLOAD":
                    values.append(payload)
                elif len(values) == 1 or values[1:] == [payload]:  # the first identifier column
                    values.append(identifier)
                else:
                    values.append(OTHER_IDENTIFIERS[(count + len(values)) % len(OTHER_IDENTIFIERS)])
            out.append(tuple(values))
    out.append((T0, "u1"))  # the wrong width
    return out


ALL_IDENTIFIERS = ["EXTERNAL_ID", "ALIAS_NAME", "ALIAS_LABEL", "BRAZE_ID", "EMAIL", "PHONE"]
ATTRIBUTE_COLUMNS = [
    COLUMNS,
    ["UPDATED_AT", "PAYLOAD", "EXTERNAL_ID"],
    ["UPDATED_AT", "EXTERNAL_ID", "EMAIL", "PAYLOAD"],
    ["UPDATED_AT", *ALL_IDENTIFIERS, "PAYLOAD"],
    ["UPDATED_AT", "EMAIL", "PAYLOAD"],
    ["UPDATED_AT", "PHONE", "PAYLOAD"],
    ["UPDATED_AT", "BRAZE_ID", "PAYLOAD"],
    ["UPDATED_AT", "ALIAS_NAME", "ALIAS_LABEL", "PAYLOAD"],
    ["UPDATED_AT", "EMAIL", "PHONE", "PAYLOAD"],
]


@pytest.mark.parametrize("columns", ATTRIBUTE_COLUMNS)
@pytest.mark.parametrize("update_existing_only", [False, True])
@pytest.mark.parametrize("limits", [None, RowLimits(max_value_chars=10, max_payload_bytes=300, max_attributes=3)])
def test_attributes_fast_path_agrees_with_the_general_path(
    columns: list[str], update_existing_only: bool, limits: RowLimits | None
) -> None:
    plan = plan_columns(ATTRIBUTES, columns)
    fast = RowConverter(ATTRIBUTES, plan, limits=limits, update_existing_only=update_existing_only)
    reference = general(RowConverter(ATTRIBUTES, plan, limits=limits, update_existing_only=update_existing_only))
    for _ in range(2):  # the second time round every shape of keys is known
        for values in rows(plan.columns, payloads()):
            assert outcome(fast.convert(values)) == outcome(reference.convert(values)), values


@pytest.mark.parametrize(
    ("data_type", "cases"), [(DataType.CUSTOM_EVENTS, event_payloads), (DataType.PURCHASE_EVENTS, purchase_payloads)]
)
@pytest.mark.parametrize("columns", ATTRIBUTE_COLUMNS)
def test_event_and_purchase_fast_path_agrees_with_the_general_path(
    data_type: DataType, cases: Any, columns: list[str]
) -> None:
    plan = plan_columns(data_type, columns)
    fast = RowConverter(data_type, plan)
    reference = general(RowConverter(data_type, plan))
    for _ in range(2):
        for values in rows(plan.columns, cases()):
            assert outcome(fast.convert(values)) == outcome(reference.convert(values)), values
