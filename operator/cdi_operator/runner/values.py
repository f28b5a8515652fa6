"""Row values: masked identifiers, type names, UTC times, native values as JSON, and Braze's key and size checks.

The checks raise `Reject` with the reason and a message naming the path and the fix.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from cdi_operator.runner.rows import Reject, RowErrorReason, RowLimits

R = RowErrorReason

_OPERATORS = frozenset({"$add", "$update", "$remove", "$identifier_key", "$identifier_value", "$new_object", "$time"})
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_SHOWN_CHARS = 64


def mask_email(value: str) -> str:
    """`jane@example.com` -> `j***@example.com`."""
    local, at, domain = value.partition("@")
    if not at:
        return value[:1] + "***"
    return f"{local[:1]}***@{domain[:_SHOWN_CHARS]}"


def mask_phone(value: str) -> str:
    """`+15551234567` -> `***67`."""
    return "***" + value[-2:] if len(value) > 4 else "***"


def clip(value: str) -> str:
    """A value as shown in a message: cut at 64 characters."""
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


def quote(key: str) -> str:
    return repr(clip(key))


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def iso(moment: datetime) -> str:
    """An aware UTC datetime as `2026-11-28T10:00:00.123456Z`."""
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def as_utc(moment: datetime) -> datetime:
    tz = moment.tzinfo
    if tz is UTC:
        return moment
    if tz is None or tz.utcoffset(moment) is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (not value or value.isspace()))


def key_problem(key: Any, path: str, limits: RowLimits, operators: bool) -> Reject | None:
    """The problem with a key, or None (slow path: called only when the fast check failed)."""
    if not isinstance(key, str):
        return Reject(R.INVALID_KEY, f"{path} has a key of type {type(key).__name__}; keys must be text")
    where = f"{path} key {quote(key)}"
    if not key:
        return Reject(R.INVALID_KEY, f"{path} has an empty key; give the attribute a name")
    if len(key) > limits.max_key_chars:
        return Reject(
            R.KEY_TOO_LONG,
            f"{where} is {len(key)} characters long; Braze keys are at most {limits.max_key_chars} "
            "characters — "
            "shorten it",
        )
    if key in _OPERATORS:
        if operators:
            return None
        return Reject(
            R.INVALID_KEY,
            f"{where} is a Braze operator, which belongs inside an attribute's value, not at the top level "
            "of "
            f"{path} — nest it under the attribute it changes",
        )
    if " " in key:
        what = "contains a space"
    elif "." in key:
        what = "contains '.'"
    elif "$" in key:
        what = "contains '$' (the only Braze operators allowed are " + ", ".join(sorted(_OPERATORS)) + ")"
    elif not key.isprintable():
        what = "contains a control or non-printable character"
    else:
        return None
    return Reject(R.INVALID_KEY, f"{where} {what}; Braze keys cannot contain spaces, '.' or '$' — rename it")


def key_ok(key: str, limit: int) -> bool:
    return bool(key) and len(key) <= limit and not (" " in key or "." in key or "$" in key) and key.isprintable()


def check_nested(value: Any, path: str, limits: RowLimits, depth: int) -> None:
    """Keys, string lengths and depth inside an object/array value, at every level."""
    if depth > limits.max_depth:
        raise Reject(
            R.NESTING_TOO_DEEP,
            f"{path} is nested more than {limits.max_depth} levels deep; flatten the value",
        )
    max_key = limits.max_key_chars
    max_value = limits.max_value_chars
    if type(value) is dict:
        for key, item in value.items():
            if not key_ok(key, max_key):
                problem = key_problem(key, path, limits, operators=True)
                if problem is not None:
                    raise problem
            kind = type(item)
            if kind is str:
                if len(item) > max_value:
                    raise too_long(f"{path}.{key}", item, limits)
            elif kind is dict or kind is list:
                check_nested(item, f"{path}.{key}", limits, depth + 1)
    else:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str:
                if len(item) > max_value:
                    raise too_long(f"{path}[{index}]", item, limits)
            elif kind is dict or kind is list:
                check_nested(item, f"{path}[{index}]", limits, depth + 1)


def too_long(path: str, value: str, limits: RowLimits) -> Reject:
    return Reject(
        R.VALUE_TOO_LONG,
        f"{path} is a string of {len(value)} characters; Braze string values are at most "
        f"{limits.max_value_chars} characters — shorten it",
    )


def jsonable(value: Any, path: str, depth: int) -> Any:
    """A native warehouse value as plain JSON types (str, int, float, bool, None, dict, list)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if not _INT64_MIN <= value <= _UINT64_MAX:
            raise Reject(R.INVALID_FIELD_TYPE, f"{path} is an integer outside 64 bits; store it as a string")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise Reject(
                R.INVALID_FIELD_TYPE,
                f"{path} is {value}, which JSON cannot hold; store null or a finite number",
            )
        return value
    if depth > 64:
        raise Reject(R.NESTING_TOO_DEEP, f"{path} is nested too deeply; flatten the value")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise Reject(
                    R.INVALID_KEY,
                    f"{path} has a key of type {type(key).__name__} ({key!r}); keys must be text",
                )
            out[str(key)] = jsonable(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [jsonable(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return jsonable(int(value), path, depth)
    if isinstance(value, float):
        return jsonable(float(value), path, depth)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Reject(
                R.INVALID_FIELD_TYPE,
                f"{path} is {value}, which JSON cannot hold; store null or a finite number",
            )
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return jsonable(int(value), path, depth)
        return float(value)
    if isinstance(value, datetime):
        return iso(as_utc(value))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise Reject(
        R.INVALID_FIELD_TYPE,
        f"{path} holds a {type(value).__name__} value, which has no JSON form; convert it to a string or "
        "number "
        "in the source query",
    )


def parse_time(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise Reject(
            R.INVALID_TIME,
            f"PAYLOAD.{field} is {type_name(value)}; give an ISO 8601 date and time such as "
            "'2026-11-28T10:00:00Z', or leave it out to use UPDATED_AT",
        )
    text = value.strip()
    try:
        if len(text) <= 10:
            raise ValueError("date only")
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Reject(
            R.INVALID_TIME,
            f"PAYLOAD.{field} {quote(value)} is not an ISO 8601 date and time; write it like "
            "'2026-11-28T10:00:00Z', or leave it out to use UPDATED_AT",
        ) from None
    return iso(as_utc(moment))
