"""The emulator's own checks of Braze objects, written from BRAZE-API.md apart from the runner's validator.

They must not import `cdi_operator.runner`: the emulator stands in for Braze, so a test passing against it means
something only while its rules are its own. Each check returns Braze's error text, or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

TRACK_ARRAYS = ("attributes", "events", "purchases")
DELETE_ID_TYPES = ("external_ids", "user_aliases", "braze_ids")
DELETE_LIMIT = 50
MAX_LENGTH = 255
MAX_ATTRIBUTES = 250

_IDENTIFIER_KEYS = frozenset(("external_id", "user_alias", "braze_id", "email", "phone"))
_UPDATE_EXISTING_ONLY, _MERGE_OBJECTS = "_update_existing_only", "_merge_objects"
_FLAGS_IN_ORDER = (_UPDATE_EXISTING_ONLY, _MERGE_OBJECTS)  # the one an error names when both are wrong
FLAG_KEYS = frozenset(_FLAGS_IN_ORDER)
_OPERATOR_KEYS = frozenset(
    ("$add", "$update", "$remove", "$identifier_key", "$identifier_value", "$new_object", "$time")
)
# What an attributes object does not count or check as an attribute, by the kind of identifier it has.
_NOT_ATTRIBUTES = FLAG_KEYS | {"external_id", "user_alias", "braze_id"}
_SKIPPED_KEYS = {kind: _NOT_ATTRIBUTES | {kind} for kind in _IDENTIFIER_KEYS}
_SCALAR_TYPES = frozenset((int, float, bool, type(None)))
_EVENT_FIELDS = frozenset(("name", "time", "app_id", "properties", "_update_existing_only")) | _IDENTIFIER_KEYS
_PURCHASE_FIELDS = (
    frozenset(("product_id", "currency", "price", "quantity", "time", "app_id", "properties", "_update_existing_only"))
    | _IDENTIFIER_KEYS
)


def identify(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(profile key, kind) of the object, or ("", error text)."""
    external_id = obj.get("external_id")
    if external_id is None or obj.get("user_alias") is not None or obj.get("braze_id") is not None:
        return _identify_other(obj)
    # The common case, an external id alone: the same checks as below without building the list of identifiers.
    if not isinstance(external_id, str) or not external_id:
        return "", "'external_id' must be a non-empty string"
    if len(external_id) > MAX_LENGTH:
        return "", f"'external_id' is longer than {MAX_LENGTH} characters"
    return external_id, "external_id"


def _identify_other(obj: Mapping[str, Any]) -> tuple[str, str]:
    strong = [k for k in ("external_id", "user_alias", "braze_id") if obj.get(k) is not None]
    if len(strong) > 1:
        return "", "Only one of 'external_id', 'user_alias' or 'braze_id' may be given"
    if strong:
        kind = strong[0]
        value = obj[kind]
        if kind == "user_alias":
            if not isinstance(value, dict):
                return "", "'user_alias' must be an object with 'alias_name' and 'alias_label'"
            name, label = value.get("alias_name"), value.get("alias_label")
            if not (isinstance(name, str) and name and isinstance(label, str) and label):
                return "", "'user_alias' needs a non-empty 'alias_name' and 'alias_label'"
            return f"alias:{label}:{name}", kind
        if not isinstance(value, str) or not value:
            return "", f"'{kind}' must be a non-empty string"
        if len(value) > MAX_LENGTH:
            return "", f"'{kind}' is longer than {MAX_LENGTH} characters"
        return (value if kind == "external_id" else f"braze_id:{value}"), kind
    for kind in ("email", "phone"):
        value = obj.get(kind)
        if value is not None:
            if not isinstance(value, str) or not value:
                return "", f"'{kind}' must be a non-empty string"
            return f"{kind}:{value}", kind
    return "", "'external_id', 'user_alias', 'braze_id', 'email' or 'phone' is required"


def _key_error(key: Any, nested: bool) -> str | None:
    if not isinstance(key, str) or not key:
        return "Invalid key: keys must be non-empty strings"
    if len(key) > MAX_LENGTH:
        return f"Key '{key[:40]}...' is longer than {MAX_LENGTH} characters"
    if nested and key in _OPERATOR_KEYS:
        return None
    if " " in key or "." in key or "$" in key:
        return f"Invalid key '{key}': keys cannot contain spaces, '.' or '$'"
    return None


# Top-level keys already found valid (a key's validity depends on nothing else): a batch repeats the same few keys
# in every object. It holds the identifier and flag keys from the start, valid keys too, so that an object's keys
# are checked at once. Bounded: past VALID_KEYS_LIMIT keys it starts again from those.
VALID_KEYS_LIMIT = 4096
_SEED_KEYS = _NOT_ATTRIBUTES | _IDENTIFIER_KEYS
_valid_keys: set[str] = set(_SEED_KEYS)


def _remember_valid(key: str) -> None:
    if type(key) is not str:  # a str subclass could compare equal to a key it does not spell
        return
    if len(_valid_keys) >= VALID_KEYS_LIMIT:
        _valid_keys.clear()
        _valid_keys.update(_SEED_KEYS)
    _valid_keys.add(key)


def _nested_key_error(key: Any) -> str | None:
    if key in _valid_keys:  # valid at the top level, so nested too
        return None
    error = _key_error(key, nested=True)
    if error is None and key not in _OPERATOR_KEYS:
        _remember_valid(key)
    return error


def _value_error(value: Any) -> str | None:
    if isinstance(value, str):
        return f"String value is longer than {MAX_LENGTH} characters" if len(value) > MAX_LENGTH else None
    if isinstance(value, dict):
        for key, item in value.items():
            error = _nested_key_error(key) or _value_error(item)
            if error:
                return error
    elif isinstance(value, list):
        for item in value:
            error = _value_error(item)
            if error:
                return error
    return None


def _time_error(value: Any) -> str | None:
    if not isinstance(value, str):
        return "'time' is required and must be an ISO 8601 string"
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"'time' is not an ISO 8601 date-time: '{value[:40]}'"
    return None


def _flag_error(obj: Mapping[str, Any]) -> str | None:
    for flag in _FLAGS_IN_ORDER:
        if flag in obj and not isinstance(obj[flag], bool):
            return f"'{flag}' must be a boolean"
    return None


def attributes_error(obj: Mapping[str, Any], id_kind: str) -> str | None:
    # The common case first: every key already known valid and no value that can fail (a superset of the values
    # checked below), so neither the key, the value nor the count check can fail. Anything else: the full check.
    if len(obj) <= MAX_ATTRIBUTES and _valid_keys.issuperset(obj):
        for value in obj.values():
            kind = type(value)
            if kind is str:
                if len(value) > MAX_LENGTH:
                    break
            elif kind not in _SCALAR_TYPES:
                break
        else:
            return _flag_error(obj) if _UPDATE_EXISTING_ONLY in obj or _MERGE_OBJECTS in obj else None
    return _attributes_error(obj, id_kind)


def _attributes_error(obj: Mapping[str, Any], id_kind: str) -> str | None:
    skipped = _SKIPPED_KEYS.get(id_kind)
    if skipped is None:
        skipped = _NOT_ATTRIBUTES | {id_kind}
    custom = 0
    for key, value in obj.items():
        if key in skipped:
            continue
        custom += 1
        if key not in _valid_keys:
            error = _key_error(key, nested=False)
            if error:
                return error
            _remember_valid(key)
        # Only what can fail for the value's type: a scalar other than a string never does.
        kind = type(value)
        if kind is str:
            if len(value) > MAX_LENGTH:
                return f"String value is longer than {MAX_LENGTH} characters"
        elif kind not in _SCALAR_TYPES:
            error = _value_error(value)
            if error:
                return error
    if custom > MAX_ATTRIBUTES:
        return f"More than {MAX_ATTRIBUTES} attributes in one object"
    return _flag_error(obj)


def _properties_error(obj: Mapping[str, Any]) -> str | None:
    if "properties" not in obj or obj["properties"] is None:
        return None
    if not isinstance(obj["properties"], dict):
        return "'properties' must be an object"
    return _value_error(obj["properties"])


def _unknown_field_error(obj: Mapping[str, Any], fields: frozenset[str]) -> str | None:
    for key in obj:
        if key not in fields:
            return f"Unknown field '{str(key)[:40]}'"
    return None


def event_error(obj: Mapping[str, Any]) -> str | None:
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return "'name' is required and must be a non-empty string"
    if len(name) > MAX_LENGTH:
        return f"'name' is longer than {MAX_LENGTH} characters"
    return (
        _unknown_field_error(obj, _EVENT_FIELDS)
        or _time_error(obj.get("time"))
        or _properties_error(obj)
        or _flag_error(obj)
    )


def purchase_error(obj: Mapping[str, Any]) -> str | None:
    product = obj.get("product_id")
    if not isinstance(product, str) or not product:
        return "'product_id' is required and must be a non-empty string"
    if len(product) > MAX_LENGTH:
        return f"'product_id' is longer than {MAX_LENGTH} characters"
    currency = obj.get("currency")
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isalpha()):
        return "'currency' is required and must be a three-letter currency code"
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price):
        return "'price' is required and must be a number"
    quantity = obj.get("quantity")
    if quantity is not None and (
        isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 100
    ):
        return "'quantity' must be an integer from 1 to 100"
    return (
        _unknown_field_error(obj, _PURCHASE_FIELDS)
        or _time_error(obj.get("time"))
        or _properties_error(obj)
        or _flag_error(obj)
    )


def delete_item_error(id_type: str, item: Any) -> str | None:
    if id_type == "user_aliases":
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("alias_name"), str)
            and isinstance(item.get("alias_label"), str)
            and bool(item["alias_name"])
            and bool(item["alias_label"])
        )
        return None if ok else "every user_aliases item needs 'alias_name' and 'alias_label'"
    if not isinstance(item, str) or not item:
        return f"every {id_type} item must be a non-empty string"
    return None


# --- catalogs ------------------------------------------------------------------------------------------------------

CATALOG_ITEM_LIMIT = 50
CATALOG_ID_LIMIT = 250
CATALOG_VALUE_LIMIT = 5_000
CATALOG_DEPTH_LIMIT = 50
CATALOG_FIELD_TYPES = frozenset(("string", "number", "boolean", "time", "array", "object"))
_CATALOG_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def catalog_error(code: str, message: str, parameter: str = "", value: Any = None) -> dict[str, Any]:
    """One item of a catalog 400's `errors`, in Braze's shape."""
    return {
        "id": code,
        "message": message,
        "parameters": [parameter] if parameter else [],
        "parameter_values": [value] if parameter else [],
    }


def _catalog_value_error(value: Any, depth: int) -> dict[str, Any] | None:
    if isinstance(value, str):
        if len(value) > CATALOG_VALUE_LIMIT:
            return catalog_error("items-too-large", f"Item values can't exceed {CATALOG_VALUE_LIMIT} characters")
        return None
    if not isinstance(value, dict | list):
        return None
    if depth > CATALOG_DEPTH_LIMIT:
        return catalog_error(
            "too-deep-nesting-in-value-object", f"Item objects can't have more than {CATALOG_DEPTH_LIMIT} levels"
        )
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        if isinstance(value, dict) and (not isinstance(key, str) or "." in key or "$" in key):
            return catalog_error(
                "invalid-keys-in-value-object", "Item object keys can't include '.' or '$'", "items", str(key)
            )
        error = _catalog_value_error(item, depth + 1)
        if error:
            return error
    return None


def _coerces(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "time":
        return isinstance(value, str) and _time_error(value) is None
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


def catalog_items_errors(body: Any, fields: Mapping[str, str], *, with_fields: bool) -> list[dict[str, Any]]:
    """Braze's errors for a PUT (`with_fields`) or DELETE items body; empty when it is accepted whole."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return [catalog_error("item-array-invalid", "'items' must be a non-empty array of objects")]
    if len(items) > CATALOG_ITEM_LIMIT:
        return [catalog_error("request-includes-too-many-items", f"At most {CATALOG_ITEM_LIMIT} items per request")]
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            errors.append(catalog_error("item-array-invalid", "Every item must be an object"))
            continue
        if "id" not in item:
            errors.append(catalog_error("items-missing-ids", "Every item needs an 'id'"))
            continue
        item_id = item["id"]
        if not isinstance(item_id, str):
            errors.append(catalog_error("ids-not-strings", "Item ids must be strings", "id", item_id))
            continue
        if len(item_id) > CATALOG_ID_LIMIT:
            errors.append(catalog_error("ids-too-large", f"Item ids can't exceed {CATALOG_ID_LIMIT} characters"))
            continue
        if not item_id or not set(item_id) <= _CATALOG_ID_CHARS:
            errors.append(
                catalog_error(
                    "invalid-ids", "Item ids can only include letters, numbers, hyphens and underscores", "id", item_id
                )
            )
            continue
        if item_id in seen:
            errors.append(catalog_error("ids-not-unique", "Item ids must be unique in the request", "id", item_id))
            continue
        seen.add(item_id)
        if not with_fields:
            continue
        for key, value in item.items():
            if key == "id":
                continue
            if key not in fields:
                errors.append(catalog_error("invalid-fields", "Items include fields the catalog lacks", "fields", key))
                break
            error = _catalog_value_error(value, 1)
            if error is None and not _coerces(fields[key], value):
                error = catalog_error(
                    "unable-to-coerce-value", f"The value of '{key}' is not a {fields[key]}", "fields", key
                )
            if error is not None:
                errors.append(error)
                break
    return errors
