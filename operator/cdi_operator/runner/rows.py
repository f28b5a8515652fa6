"""What a source row becomes: a `Delivery` for Braze, or a `RowError` with a stable reason users see.

`RowConverter.convert()` (converter.py) yields one of the two for every row; `RowLimits` are Braze's per-row
limits it checks.

Row error reasons (`RowErrorReason`; the value is the code shown in status, logs and metrics):

- `MISSING_IDENTIFIER`: every identifier column of the row is NULL or blank
- `ALIAS_INCOMPLETE`: no EXTERNAL_ID, and only one of ALIAS_NAME / ALIAS_LABEL is set
- `UNSUPPORTED_IDENTIFIER`: userDeletes row identified only by EMAIL or PHONE (`/users/delete` takes neither)
- `MISSING_UPDATED_AT`: UPDATED_AT is NULL
- `MISSING_PAYLOAD`: PAYLOAD is NULL or empty text (custom attributes, events, purchases)
- `INVALID_PAYLOAD_JSON`: PAYLOAD text is not valid JSON (or not UTF-8)
- `PAYLOAD_NOT_OBJECT`: PAYLOAD is JSON but not an object (array, string, number, `null`)
- `PAYLOAD_TOO_LARGE`: PAYLOAD is over 1 MB ("Payload was greater than 1MB")
- `TOO_MANY_ATTRIBUTES`: a custom attributes PAYLOAD has more than 250 top-level keys
- `INVALID_KEY`: a key is empty, holds a space, `.`, `$` or a control character (operators aside), or an
  events / purchases PAYLOAD holds a key that is not a field of that object; a native key that is not text
- `KEY_TOO_LONG`: a key (at any depth) is over 255 characters
- `VALUE_TOO_LONG`: a string value (at any depth) or an identifier is over 255 characters
- `NESTED_ATTRIBUTE_TOO_LARGE`: one top-level object/array attribute value is over 100 KB serialized
- `NESTING_TOO_DEEP`: objects/arrays nested more than 32 levels deep
- `IDENTIFIER_IN_PAYLOAD`: PAYLOAD holds an identifier key that would conflict with the row's identifier (see
  below)
- `MISSING_EVENT_NAME`: custom event without a non-blank `name`
- `INVALID_TIME`: `time` is not an ISO 8601 date-time string
- `MISSING_PURCHASE_FIELD`: purchase without `product_id`, `currency` or `price`
- `INVALID_PRICE`: `price` is not a finite number (booleans and numeric strings are refused)
- `INVALID_CURRENCY`: `currency` is not three ASCII letters
- `INVALID_QUANTITY`: `quantity` is not an integer from 1 to 100
- `PROPERTIES_TOO_LARGE`: event/purchase `properties` holding arrays or objects are over 50 KB serialized
- `INVALID_FIELD_TYPE`: a value of the wrong type: identifier not text/integer, UPDATED_AT not a timestamp,
  `name` / `app_id` / `product_id` not a string, `properties` not an object, `_merge_objects` /
  `_update_existing_only` not a boolean, a native value with no JSON form (bytes, NaN, ...)
- `MISSING_ITEM_ID`: catalogItems row whose ID is NULL or blank
- `INVALID_ITEM_ID`: a catalog item ID holding anything but letters, digits, `-` and `_` (or not text)
- `ITEM_ID_TOO_LONG`: a catalog item ID over 250 characters
- `INVALID_ROW`: the row itself is unusable (wrong number of values) or failed in an unexpected way
- `BRAZE_REJECTED`: set by the runner: Braze's 201 `errors` list named the object, or (catalogs) Braze refused
  the item with a 400 once it was alone in its request; the message starts with Braze's error id

Catalog items (catalogItems) are held to Braze's catalog limits instead of the user limits: keys without `.` or
`$` (`INVALID_KEY`), string values at most 5,000 characters at any depth (`VALUE_TOO_LONG`), at most 50 levels of
nesting (`NESTING_TOO_DEEP`), `DELETED` a boolean (`INVALID_FIELD_TYPE`), a PAYLOAD `id` other than the ID column
(`IDENTIFIER_IN_PAYLOAD`), and the PAYLOAD checks above for rows that are not deleted.

"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["Delivery", "Reject", "RowError", "RowErrorReason", "RowLimits"]


class RowErrorReason(StrEnum):
    MISSING_IDENTIFIER = "MISSING_IDENTIFIER"
    ALIAS_INCOMPLETE = "ALIAS_INCOMPLETE"
    UNSUPPORTED_IDENTIFIER = "UNSUPPORTED_IDENTIFIER"
    MISSING_UPDATED_AT = "MISSING_UPDATED_AT"
    MISSING_PAYLOAD = "MISSING_PAYLOAD"
    INVALID_PAYLOAD_JSON = "INVALID_PAYLOAD_JSON"
    PAYLOAD_NOT_OBJECT = "PAYLOAD_NOT_OBJECT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    TOO_MANY_ATTRIBUTES = "TOO_MANY_ATTRIBUTES"
    INVALID_KEY = "INVALID_KEY"
    KEY_TOO_LONG = "KEY_TOO_LONG"
    VALUE_TOO_LONG = "VALUE_TOO_LONG"
    NESTED_ATTRIBUTE_TOO_LARGE = "NESTED_ATTRIBUTE_TOO_LARGE"
    NESTING_TOO_DEEP = "NESTING_TOO_DEEP"
    IDENTIFIER_IN_PAYLOAD = "IDENTIFIER_IN_PAYLOAD"
    MISSING_EVENT_NAME = "MISSING_EVENT_NAME"
    INVALID_TIME = "INVALID_TIME"
    MISSING_PURCHASE_FIELD = "MISSING_PURCHASE_FIELD"
    INVALID_PRICE = "INVALID_PRICE"
    INVALID_CURRENCY = "INVALID_CURRENCY"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    PROPERTIES_TOO_LARGE = "PROPERTIES_TOO_LARGE"
    INVALID_FIELD_TYPE = "INVALID_FIELD_TYPE"
    MISSING_ITEM_ID = "MISSING_ITEM_ID"
    INVALID_ITEM_ID = "INVALID_ITEM_ID"
    ITEM_ID_TOO_LONG = "ITEM_ID_TOO_LONG"
    INVALID_ROW = "INVALID_ROW"
    BRAZE_REJECTED = "BRAZE_REJECTED"


@dataclass(frozen=True, slots=True)
class RowError:
    reason: RowErrorReason
    message: str
    identifier: str  # "external_id=u1", "alias=label:name", "braze_id=…", "email=j***@example.com", "" when none
    updated_at: datetime | None


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs about a microsecond a row more
class Delivery:
    # "attributes" | "events" | "purchases" | "external_ids" | "user_aliases" | "braze_ids" | "items" (catalog PUT)
    # | "delete_items" (catalog DELETE)
    target: str
    # the /users/track object, the /users/delete identifier (str or {"alias_name", "alias_label"}), or the catalog
    # item ({"id": …, fields…}; {"id": …} to delete)
    body: Any
    user_key: str  # "e:u1", "a:<label>\x1f<name>", "b:…", "m:<email lowercased>", "p:<phone>", "i:<item id>"
    fingerprint: str  # 16 hex chars
    updated_at: datetime  # aware UTC


@dataclass(frozen=True, slots=True)
class RowLimits:
    """Braze's per-row limits (BRAZE-API.md); the defaults are the stricter reading."""

    max_payload_bytes: int = 1_000_000
    max_attributes: int = 250
    max_key_chars: int = 255
    max_value_chars: int = 255
    max_nested_attribute_bytes: int = 100_000
    max_properties_bytes: int = 50_000
    max_depth: int = 32
    max_item_id_chars: int = 250
    max_catalog_value_chars: int = 5_000
    max_catalog_depth: int = 50


class Reject(Exception):  # internal control flow, never escapes RowConverter.convert()
    __slots__ = ("message", "reason")

    def __init__(self, reason: RowErrorReason, message: str) -> None:
        self.reason = reason
        self.message = message
