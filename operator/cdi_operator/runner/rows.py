"""Validate each source row and turn it into the Braze object it stands for.

`plan_columns()` checks the table's columns once per sync (a problem there is a sync-level
`SourceColumnsError`); `RowConverter.convert()` then turns each row into a `Delivery` (the `/users/track`
object, or the identifier for `/users/delete`) or a `RowError`. `convert()` never raises: any value it cannot
use becomes a `RowError` with a stable reason code, a message that names the column or `PAYLOAD` key and the
fix, and the (masked) user it concerns.

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
- `INVALID_ROW`: the row itself is unusable (wrong number of values) or failed in an unexpected way
- `BRAZE_REJECTED`: set by the runner: Braze's 201 `errors` list named the object

Decisions where BRAZE-API.md is silent (strict where it matters, documented here):

- Identifier precedence: EXTERNAL_ID, alias (ALIAS_NAME + ALIAS_LABEL), BRAZE_ID, EMAIL, PHONE. Columns after
  the chosen one are ignored. With no EXTERNAL_ID, a half alias is `ALIAS_INCOMPLETE` even if
  BRAZE_ID/EMAIL/PHONE are set: the row meant the alias, and silently falling through could update another
  profile. Empty or whitespace-only strings count as NULL; other values are sent exactly as stored (no
  trimming or case folding). Integers (and integral `Decimal`s without fraction digits, and UUIDs) become
  text; floats, booleans, etc. are refused.
- Identifiers are "string values" too, so they are held to 255 characters (`VALUE_TOO_LONG`).
- Alias, email and phone objects get `"_update_existing_only": false` (attributes, events and purchases) so
  Braze creates the user; braze_id and external_id objects never get it from us. A PAYLOAD may set
  `_update_existing_only` itself (a boolean); its value wins.
- `IDENTIFIER_IN_PAYLOAD`: `external_id`, `user_alias`, `braze_id` are always refused in a PAYLOAD
  (identifiers come from the identifier columns). `email` and `phone` are also standard profile attributes, so
  in custom attributes they are refused only where they would conflict: `email` when the row is identified by
  EMAIL and the value differs (case-insensitively) or when it is identified by PHONE (Braze would then
  identify the object by e-mail); `phone` when the row is identified by PHONE and the value differs. In events
  and purchases every identifier key is refused (there they can only be identifiers).
- Custom attributes with an empty PAYLOAD `{}` are delivered: an object with only its identifier creates the
  profile if it does not exist (the way to create alias-only or e-mail-only users), and Braze bills data
  points per attribute, so it costs nothing; a row error would turn a legitimate "ensure the user exists" into
  a Partial run.
- Events and purchases are strict: a top-level key that is not a field of the object is `INVALID_KEY` (custom
  data belongs under `properties`); a JSON `null` for an optional field (`time`, `app_id`, `properties`,
  `quantity`) means absent. `time` must be a date and time (a bare date is refused); it is normalised to UTC
  (`2026-11-28T10:00:00.000000Z`), a time without offset is taken as UTC. Without `time`, UPDATED_AT is used.
  Negative prices are allowed (refunds); `currency` is upper-cased, not checked against ISO 4217 (Braze does).
- Keys: no space, `.`, `$`, control or other non-printable characters, not empty, at most 255 characters, at
  every depth, in attributes and in event/purchase `properties`. Operator keys allowed below the top level
  only: `$add`, `$update`, `$remove` (arrays of objects), `$identifier_key`, `$identifier_value`,
  `$new_object` (items of `$update` / `$remove`) and `$time` (nested dates). At the top level of an attributes
  PAYLOAD, `_merge_objects` and `_update_existing_only` must be booleans. Lengths count characters (code
  points), not bytes.
- Sizes use decimal units (1 MB = 1,000,000 bytes, 100 KB = 100,000 bytes, 50 KB = 50,000 bytes), the stricter
  reading; all limits are in `RowLimits` and can be changed. PAYLOAD size is the raw text's UTF-8 size, or the
  compact JSON size of a native value. The 100 KB nested limit applies to every top-level object or array
  value.
- Native PAYLOAD values (BigQuery JSON, Databricks STRUCT/MAP, VARIANT) are converted to plain JSON: `Decimal`
  to an integer (no fraction digits) or a float, datetimes to ISO 8601 UTC text, dates to `YYYY-MM-DD`, UUIDs
  to text, tuples to arrays. Bytes, NaN/Infinity, integers outside 64 bits and non-text keys are
  `INVALID_FIELD_TYPE` / `INVALID_KEY`: a NaN silently becoming `null` would remove the attribute.
- Fingerprint: blake2b-64 of the exact identifier (kind and value) and the PAYLOAD (its raw bytes when text,
  the canonical sorted-key JSON when native). UPDATED_AT is not part of it (the frontier pairs the two).
- Columns other than UPDATED_AT, the identifier columns and PAYLOAD are ignored (not selected). Two columns
  that differ only in case and match the same contract column are a sync-level error.
- Identifiers in errors: external_id / braze_id / alias are shown as they are (cut at 64 characters); e-mail
  as `j***@example.com`, phone as `***67`, because status and logs are widely readable.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from cdi_operator.api.models import DataType

__all__ = [
    "ColumnPlan",
    "Delivery",
    "RowConverter",
    "RowError",
    "RowErrorReason",
    "RowLimits",
    "SourceColumnsError",
    "mask_email",
    "mask_phone",
    "plan_columns",
]


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
    INVALID_ROW = "INVALID_ROW"
    BRAZE_REJECTED = "BRAZE_REJECTED"


@dataclass(frozen=True, slots=True)
class RowError:
    reason: RowErrorReason
    message: str
    identifier: str  # "external_id=u1", "alias=label:name", "braze_id=…", "email=j***@example.com", "" when none
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Delivery:
    target: str  # "attributes" | "events" | "purchases" | "external_ids" | "user_aliases" | "braze_ids"
    body: Any  # the /users/track object, or the /users/delete identifier (str or {"alias_name", "alias_label"})
    user_key: str  # "e:u1", "a:<label>\x1f<name>", "b:…", "m:<email lowercased>", "p:<phone>"
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


# --- column planning ----------------------------------------------------------------------------------------

UPDATED_AT = "UPDATED_AT"
EXTERNAL_ID = "EXTERNAL_ID"
ALIAS_NAME = "ALIAS_NAME"
ALIAS_LABEL = "ALIAS_LABEL"
BRAZE_ID = "BRAZE_ID"
EMAIL = "EMAIL"
PHONE = "PHONE"
PAYLOAD = "PAYLOAD"

_IDENTIFIER_COLUMNS = (EXTERNAL_ID, ALIAS_NAME, ALIAS_LABEL, BRAZE_ID, EMAIL, PHONE)
_CONTRACT_COLUMNS = (UPDATED_AT, *_IDENTIFIER_COLUMNS, PAYLOAD)


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

    def index(self, contract_column: str) -> int | None:
        """Position of a contract column (e.g. "EXTERNAL_ID") in `columns`, None when the table lacks it."""
        if contract_column == UPDATED_AT:
            return 0
        value: int | None = getattr(self, contract_column.lower())
        return value


def plan_columns(data_type: DataType, table_columns: Sequence[str]) -> ColumnPlan:
    """Check the table's columns against the source contract and say which to read. Raises "
    "SourceColumnsError."""
    data_type = DataType(data_type)
    found: dict[str, str] = {}
    problems: list[str] = []
    for name in table_columns:
        canonical = name.upper()
        if canonical not in _CONTRACT_COLUMNS:
            continue
        if canonical in found:
            problems.append(
                f"columns {found[canonical]!r} and {name!r} both match {canonical} (names are matched "
                "case-insensitively); rename or drop one of them, for example in a view"
            )
            continue
        found[canonical] = name
    if UPDATED_AT not in found:
        problems.append(
            "column UPDATED_AT is missing; add a UTC timestamp column named UPDATED_AT holding when each "
            "row last "
            "changed"
        )
    if (ALIAS_NAME in found) != (ALIAS_LABEL in found):
        have, lack = (ALIAS_NAME, ALIAS_LABEL) if ALIAS_NAME in found else (ALIAS_LABEL, ALIAS_NAME)
        problems.append(f"column {have} is present without {lack}; an alias needs both columns, add {lack}")
    identifiers = [c for c in _IDENTIFIER_COLUMNS if c in found]
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


# --- helpers ------------------------------------------------------------------------------------------------


class _Reject(Exception):  # internal control flow, never escapes convert()
    __slots__ = ("message", "reason")

    def __init__(self, reason: RowErrorReason, message: str) -> None:
        self.reason = reason
        self.message = message


R = RowErrorReason

_OPERATORS = frozenset({"$add", "$update", "$remove", "$identifier_key", "$identifier_value", "$new_object", "$time"})
_ALWAYS_IDENTIFIER_KEYS = frozenset({"external_id", "user_alias", "braze_id"})
_TRACK_IDENTIFIER_KEYS = frozenset({"external_id", "user_alias", "braze_id", "email", "phone"})
_ATTRIBUTE_FLAGS = ("_merge_objects", "_update_existing_only")
_ATTRIBUTE_SPECIAL_KEYS = frozenset({"external_id", "user_alias", "braze_id", "email", "phone", *_ATTRIBUTE_FLAGS})
_EVENT_KEYS = frozenset({"name", "time", "app_id", "properties", "_update_existing_only"})
_PURCHASE_KEYS = frozenset(
    {"product_id", "currency", "price", "quantity", "time", "app_id", "properties", "_update_existing_only"}
)
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


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


def _quote(key: str) -> str:
    return repr(_shown(key))


def _type_name(value: Any) -> str:
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


def _iso(moment: datetime) -> str:
    """An aware UTC datetime as `2026-11-28T10:00:00.123456Z`."""
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def _utc(moment: datetime) -> datetime:
    tz = moment.tzinfo
    if tz is UTC:
        return moment
    if tz is None or tz.utcoffset(moment) is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (not value or value.isspace()))


def _key_problem(key: Any, path: str, limits: RowLimits, operators: bool) -> _Reject | None:
    """The problem with a key, or None (slow path: called only when the fast check failed)."""
    if not isinstance(key, str):
        return _Reject(R.INVALID_KEY, f"{path} has a key of type {type(key).__name__}; keys must be text")
    where = f"{path} key {_quote(key)}"
    if not key:
        return _Reject(R.INVALID_KEY, f"{path} has an empty key; give the attribute a name")
    if len(key) > limits.max_key_chars:
        return _Reject(
            R.KEY_TOO_LONG,
            f"{where} is {len(key)} characters long; Braze keys are at most {limits.max_key_chars} "
            "characters — "
            "shorten it",
        )
    if key in _OPERATORS:
        if operators:
            return None
        return _Reject(
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
    return _Reject(R.INVALID_KEY, f"{where} {what}; Braze keys cannot contain spaces, '.' or '$' — rename it")


def _key_ok(key: str, limit: int) -> bool:
    return bool(key) and len(key) <= limit and not (" " in key or "." in key or "$" in key) and key.isprintable()


def _check_nested(value: Any, path: str, limits: RowLimits, depth: int) -> None:
    """Keys, string lengths and depth inside an object/array value, at every level."""
    if depth > limits.max_depth:
        raise _Reject(
            R.NESTING_TOO_DEEP,
            f"{path} is nested more than {limits.max_depth} levels deep; flatten the value",
        )
    max_key = limits.max_key_chars
    max_value = limits.max_value_chars
    if type(value) is dict:
        for key, item in value.items():
            if not _key_ok(key, max_key):
                problem = _key_problem(key, path, limits, operators=True)
                if problem is not None:
                    raise problem
            kind = type(item)
            if kind is str:
                if len(item) > max_value:
                    raise _too_long(f"{path}.{key}", item, limits)
            elif kind is dict or kind is list:
                _check_nested(item, f"{path}.{key}", limits, depth + 1)
    else:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str:
                if len(item) > max_value:
                    raise _too_long(f"{path}[{index}]", item, limits)
            elif kind is dict or kind is list:
                _check_nested(item, f"{path}[{index}]", limits, depth + 1)


def _too_long(path: str, value: str, limits: RowLimits) -> _Reject:
    return _Reject(
        R.VALUE_TOO_LONG,
        f"{path} is a string of {len(value)} characters; Braze string values are at most "
        f"{limits.max_value_chars} characters — shorten it",
    )


def _jsonable(value: Any, path: str, depth: int) -> Any:
    """A native warehouse value as plain JSON types (str, int, float, bool, None, dict, list)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if not _INT64_MIN <= value <= _UINT64_MAX:
            raise _Reject(R.INVALID_FIELD_TYPE, f"{path} is an integer outside 64 bits; store it as a string")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _Reject(
                R.INVALID_FIELD_TYPE,
                f"{path} is {value}, which JSON cannot hold; store null or a finite number",
            )
        return value
    if depth > 64:
        raise _Reject(R.NESTING_TOO_DEEP, f"{path} is nested too deeply; flatten the value")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Reject(
                    R.INVALID_KEY,
                    f"{path} has a key of type {type(key).__name__} ({key!r}); keys must be text",
                )
            out[str(key)] = _jsonable(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return _jsonable(int(value), path, depth)
    if isinstance(value, float):
        return _jsonable(float(value), path, depth)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _Reject(
                R.INVALID_FIELD_TYPE,
                f"{path} is {value}, which JSON cannot hold; store null or a finite number",
            )
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return _jsonable(int(value), path, depth)
        return float(value)
    if isinstance(value, datetime):
        return _iso(_utc(value))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _Reject(
        R.INVALID_FIELD_TYPE,
        f"{path} holds a {type(value).__name__} value, which has no JSON form; convert it to a string or "
        "number "
        "in the source query",
    )


def _parse_time(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _Reject(
            R.INVALID_TIME,
            f"PAYLOAD.{field} is {_type_name(value)}; give an ISO 8601 date and time such as "
            "'2026-11-28T10:00:00Z', or leave it out to use UPDATED_AT",
        )
    text = value.strip()
    try:
        if len(text) <= 10:
            raise ValueError("date only")
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Reject(
            R.INVALID_TIME,
            f"PAYLOAD.{field} {_quote(value)} is not an ISO 8601 date and time; write it like "
            "'2026-11-28T10:00:00Z', or leave it out to use UPDATED_AT",
        ) from None
    return _iso(_utc(moment))


# --- conversion ---------------------------------------------------------------------------------------------

_TARGETS = {
    DataType.CUSTOM_ATTRIBUTES: "attributes",
    DataType.CUSTOM_EVENTS: "events",
    DataType.PURCHASE_EVENTS: "purchases",
}
_DELETE_TARGETS = {"e": "external_ids", "a": "user_aliases", "b": "braze_ids"}
_TRACK_KEYS = {"e": "external_id", "a": "user_alias", "b": "braze_id", "m": "email", "p": "phone"}


class RowConverter:
    """Turns rows (values in `plan.columns` order) into Deliveries or RowErrors. Never raises from "
    "`convert()`."""

    def __init__(self, data_type: DataType, plan: ColumnPlan, *, limits: RowLimits | None = None) -> None:
        self.data_type = DataType(data_type)
        self.plan = plan
        self.limits = limits or RowLimits()
        self._width = len(plan.columns)
        self._deletes = self.data_type == DataType.USER_DELETES
        self._target = _TARGETS.get(self.data_type, "")
        self._payload_index = plan.payload if plan.payload is not None else -1
        if self.data_type == DataType.CUSTOM_ATTRIBUTES:
            self._build = self._attributes
        elif self.data_type == DataType.CUSTOM_EVENTS:
            self._build = self._event
        elif self.data_type == DataType.PURCHASE_EVENTS:
            self._build = self._purchase
        else:
            self._build = self._no_payload
        # identifier columns in precedence order: (kind, index, contract name)
        self._order: list[tuple[str, int, str]] = [
            (kind, index, name)
            for kind, index, name in (
                ("e", plan.external_id, EXTERNAL_ID),
                ("b", plan.braze_id, BRAZE_ID),
                ("m", plan.email, EMAIL),
                ("p", plan.phone, PHONE),
            )
            if index is not None
        ]
        self._external_id = plan.external_id
        self._alias = (
            (plan.alias_name, plan.alias_label)
            if plan.alias_name is not None and plan.alias_label is not None
            else None
        )
        self._after_alias = [entry for entry in self._order if entry[0] != "e"]

    # -- public ---------------------------------------------------------------------------------------------

    def convert(self, row: Sequence[Any]) -> Delivery | RowError:
        try:
            return self._convert(row)
        except _Reject as reject:
            return RowError(reject.reason, reject.message, self._describe(row), self._updated_at_or_none(row))
        except Exception as exc:  # a row never stops the sync
            return RowError(
                R.INVALID_ROW,
                f"the row could not be converted ({type(exc).__name__}: {_shown(str(exc))}); check its values",
                self._describe(row),
                self._updated_at_or_none(row),
            )

    # -- the fast path --------------------------------------------------------------------------------------

    def _convert(self, row: Sequence[Any]) -> Delivery:
        if len(row) != self._width:
            raise _Reject(
                R.INVALID_ROW,
                f"the row has {len(row)} values but {self._width} columns were selected "
                f"({', '.join(self.plan.columns)}); this is a warehouse adapter bug, please report it",
            )
        kind, value, user_key, identity = self._identify(row)
        updated_at = row[0]
        if type(updated_at) is not datetime or updated_at.tzinfo is not UTC:
            updated_at = self._updated_at(updated_at)
        if self._deletes:
            body: Any = value
            if kind not in _DELETE_TARGETS:
                column = EMAIL if kind == "m" else PHONE
                raise _Reject(
                    R.UNSUPPORTED_IDENTIFIER,
                    f"the row is identified only by {column}, and Braze cannot delete users by "
                    f"{column.lower()}; set EXTERNAL_ID, ALIAS_NAME with ALIAS_LABEL, or BRAZE_ID",
                )
            digest = hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()
            return Delivery(_DELETE_TARGETS[kind], body, user_key, digest, updated_at)
        payload, raw = self._payload(row[self._payload_index])
        body = self._build(payload, kind, value, updated_at)
        digest = hashlib.blake2b(identity.encode() + b"\x1e" + raw, digest_size=8).hexdigest()
        return Delivery(self._target, body, user_key, digest, updated_at)

    def _identify(self, row: Sequence[Any]) -> tuple[str, Any, str, str]:
        """(kind, identifier value for the body, user_key, exact identity for the fingerprint)."""
        index = self._external_id
        if index is not None:
            value = row[index]
            if value is not None:
                if type(value) is not str:
                    value = self._text(value, EXTERNAL_ID)
                if value and not value.isspace():
                    if len(value) > self.limits.max_value_chars:
                        raise self._identifier_too_long(EXTERNAL_ID, value)
                    key = "e:" + value
                    return "e", value, key, key
        if self._alias is not None:
            name = row[self._alias[0]]
            label = row[self._alias[1]]
            name_blank = _blank(name)
            label_blank = _blank(label)
            if not (name_blank and label_blank):
                if name_blank or label_blank:
                    have, lack = (ALIAS_LABEL, ALIAS_NAME) if name_blank else (ALIAS_NAME, ALIAS_LABEL)
                    raise _Reject(
                        R.ALIAS_INCOMPLETE,
                        f"{have} is set but {lack} is empty; an alias needs both ALIAS_NAME and ALIAS_LABEL "
                        "— "
                        f"fill {lack}" + (" or set EXTERNAL_ID" if self._external_id is not None else ""),
                    )
                name = self._text(name, ALIAS_NAME)
                label = self._text(label, ALIAS_LABEL)
                if len(name) > self.limits.max_value_chars:
                    raise self._identifier_too_long(ALIAS_NAME, name)
                if len(label) > self.limits.max_value_chars:
                    raise self._identifier_too_long(ALIAS_LABEL, label)
                key = f"a:{label}\x1f{name}"
                return "a", {"alias_name": name, "alias_label": label}, key, key
        for kind, position, column in self._after_alias:
            value = row[position]
            if _blank(value):
                continue
            value = self._text(value, column)
            if _blank(value):
                continue
            if len(value) > self.limits.max_value_chars:
                raise self._identifier_too_long(column, value)
            identity = f"{kind}:{value}"
            return kind, value, (f"m:{value.lower()}" if kind == "m" else identity), identity
        raise _Reject(
            R.MISSING_IDENTIFIER,
            "every identifier column ("
            + ", ".join(self._identifier_columns())
            + ") is empty; set one of them so the row names a user",
        )

    def _payload(self, value: Any) -> tuple[dict[str, Any], bytes]:
        """The parsed PAYLOAD object and the bytes it is fingerprinted by."""
        limit = self.limits.max_payload_bytes
        kind = type(value)
        if kind is str:
            try:
                raw = value.encode()
            except UnicodeEncodeError:
                raise _Reject(
                    R.INVALID_PAYLOAD_JSON,
                    "PAYLOAD text holds invalid Unicode (a lone surrogate); fix the text",
                ) from None
        elif kind is bytes:
            raw = value
        elif kind is dict or isinstance(value, Mapping):
            payload = _jsonable(value, "PAYLOAD", 0)
            raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
            if len(raw) > limit:
                raise self._too_large(len(raw))
            return payload, raw
        elif value is None:
            raise _Reject(R.MISSING_PAYLOAD, "PAYLOAD is NULL; give a JSON object with the row's fields")
        elif isinstance(value, bytearray | memoryview):
            raw = bytes(value)
        elif isinstance(value, str):
            raw = str(value).encode()
        else:
            raise _Reject(
                R.PAYLOAD_NOT_OBJECT,
                f'PAYLOAD is {_type_name(value)}; it must be a JSON object such as {{"key": "value"}}',
            )
        if len(raw) > limit:
            raise self._too_large(len(raw))
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if not raw.strip():
                raise _Reject(R.MISSING_PAYLOAD, "PAYLOAD is empty; give a JSON object with the row's fields") from None
            raise _Reject(R.INVALID_PAYLOAD_JSON, f"PAYLOAD is not valid JSON ({exc}); fix the JSON text") from None
        if type(payload) is not dict:
            raise _Reject(
                R.PAYLOAD_NOT_OBJECT,
                f'PAYLOAD is JSON {_type_name(payload)}; it must be a JSON object such as {{"key": "value"}}',
            )
        return payload, raw

    def _attributes(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        limits = self.limits
        if len(payload) > limits.max_attributes:
            raise _Reject(
                R.TOO_MANY_ATTRIBUTES,
                f"PAYLOAD has {len(payload)} top-level keys; Braze takes at most {limits.max_attributes} "
                "attributes per row — split the row or nest related attributes in an object",
            )
        if not _ATTRIBUTE_SPECIAL_KEYS.isdisjoint(payload):
            self._attribute_special_keys(payload, kind, value)
        max_key = limits.max_key_chars
        max_value = limits.max_value_chars
        for key, item in payload.items():
            if not key or len(key) > max_key or " " in key or "." in key or "$" in key or not key.isprintable():
                problem = _key_problem(key, "PAYLOAD", limits, operators=False)
                if problem is not None:
                    raise problem
            item_type = type(item)
            if item_type is str:
                if len(item) > max_value:
                    raise _too_long(f"PAYLOAD.{key}", item, limits)
            elif item_type is dict or item_type is list:
                _check_nested(item, f"PAYLOAD.{key}", limits, 1)
                size = len(orjson.dumps(item))
                if size > limits.max_nested_attribute_bytes:
                    raise _Reject(
                        R.NESTED_ATTRIBUTE_TOO_LARGE,
                        f"PAYLOAD.{key} is {size} bytes as JSON; a nested attribute is at most "
                        f"{limits.max_nested_attribute_bytes} bytes — split it or drop fields",
                    )
        payload[_TRACK_KEYS[kind]] = value
        if kind in "amp" and "_update_existing_only" not in payload:
            payload["_update_existing_only"] = False
        return payload

    def _attribute_special_keys(self, payload: dict[str, Any], kind: str, value: Any) -> None:
        for key in _ATTRIBUTE_FLAGS:
            if key in payload and type(payload[key]) is not bool:
                raise _Reject(
                    R.INVALID_FIELD_TYPE,
                    f"PAYLOAD.{key} is {_type_name(payload[key])}; it must be true or false",
                )
        for key in ("external_id", "user_alias", "braze_id"):
            if key in payload:
                raise _Reject(
                    R.IDENTIFIER_IN_PAYLOAD,
                    f"PAYLOAD key {key!r} is an identifier; identifiers come from the identifier columns "
                    f"({', '.join(self._identifier_columns())}) — remove it from PAYLOAD",
                )
        if "email" in payload:
            email = payload["email"]
            if kind == "p":
                raise _Reject(
                    R.IDENTIFIER_IN_PAYLOAD,
                    "PAYLOAD key 'email' would make Braze identify this PHONE row by e-mail; remove it, or "
                    "identify the row by EXTERNAL_ID to set both",
                )
            if kind == "m" and not (isinstance(email, str) and email.lower() == value.lower()):
                raise _Reject(
                    R.IDENTIFIER_IN_PAYLOAD,
                    "PAYLOAD key 'email' differs from the EMAIL column that identifies this row; remove "
                    "it, or "
                    "identify the row by EXTERNAL_ID to change the e-mail address",
                )
        if "phone" in payload and kind == "p" and payload["phone"] != value:
            raise _Reject(
                R.IDENTIFIER_IN_PAYLOAD,
                "PAYLOAD key 'phone' differs from the PHONE column that identifies this row; remove it, or "
                "identify the row by EXTERNAL_ID to change the phone number",
            )

    def _common(
        self,
        payload: dict[str, Any],
        allowed: frozenset[str],
        what: str,
        kind: str,
        value: Any,
        updated_at: datetime,
    ) -> dict[str, Any]:
        """Checks and fields shared by events and purchases; returns the object without its own fields."""
        if not allowed.issuperset(payload):
            for key in payload:
                if key in allowed:
                    continue
                if key in _TRACK_IDENTIFIER_KEYS:
                    raise _Reject(
                        R.IDENTIFIER_IN_PAYLOAD,
                        f"PAYLOAD key {key!r} is an identifier; identifiers come from the identifier columns "
                        f"({', '.join(self._identifier_columns())}) — remove it from PAYLOAD",
                    )
                problem = _key_problem(key, "PAYLOAD", self.limits, operators=False)
                if problem is not None:
                    raise problem
                raise _Reject(
                    R.INVALID_KEY,
                    f"PAYLOAD key {_quote(key)} is not a field of a {what} (allowed: "
                    f"{', '.join(sorted(allowed))}); move custom data under 'properties'",
                )
        body: dict[str, Any] = {_TRACK_KEYS[kind]: value}
        moment = payload.get("time")
        body["time"] = _iso(updated_at) if moment is None else _parse_time(moment, "time")
        app_id = payload.get("app_id")
        if app_id is not None:
            if type(app_id) is not str:
                raise _Reject(R.INVALID_FIELD_TYPE, f"PAYLOAD.app_id is {_type_name(app_id)}; it must be a string")
            if len(app_id) > self.limits.max_value_chars:
                raise _too_long("PAYLOAD.app_id", app_id, self.limits)
            body["app_id"] = app_id
        properties = payload.get("properties")
        if properties is not None:
            if type(properties) is not dict:
                raise _Reject(
                    R.INVALID_FIELD_TYPE,
                    f"PAYLOAD.properties is {_type_name(properties)}; it must be a JSON object",
                )
            if properties:
                self._check_properties(properties)
            body["properties"] = properties
        flag = payload.get("_update_existing_only")
        if flag is not None:
            if type(flag) is not bool:
                raise _Reject(
                    R.INVALID_FIELD_TYPE,
                    f"PAYLOAD._update_existing_only is {_type_name(flag)}; it must be true or false",
                )
            body["_update_existing_only"] = flag
        elif kind in "amp":
            body["_update_existing_only"] = False
        return body

    def _check_properties(self, properties: dict[str, Any]) -> None:
        limits = self.limits
        nested = False
        for key, item in properties.items():
            if not _key_ok(key, limits.max_key_chars):
                problem = _key_problem(key, "PAYLOAD.properties", limits, operators=False)
                if problem is not None:
                    raise problem
            item_type = type(item)
            if item_type is str:
                if len(item) > limits.max_value_chars:
                    raise _too_long(f"PAYLOAD.properties.{key}", item, limits)
            elif item_type is dict or item_type is list:
                nested = True
                _check_nested(item, f"PAYLOAD.properties.{key}", limits, 1)
        if nested:
            size = len(orjson.dumps(properties))
            if size > limits.max_properties_bytes:
                raise _Reject(
                    R.PROPERTIES_TOO_LARGE,
                    f"PAYLOAD.properties is {size} bytes as JSON; properties holding arrays or objects are "
                    "at "
                    f"most {limits.max_properties_bytes} bytes — drop or flatten some",
                )

    def _event(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        name = payload.get("name")
        if type(name) is not str or not name or name.isspace():
            if name is None or isinstance(name, str):
                raise _Reject(R.MISSING_EVENT_NAME, "PAYLOAD.name is missing or empty; give the custom event's name")
            raise _Reject(R.INVALID_FIELD_TYPE, f"PAYLOAD.name is {_type_name(name)}; it must be a string")
        if len(name) > self.limits.max_value_chars:
            raise _too_long("PAYLOAD.name", name, self.limits)
        body = self._common(payload, _EVENT_KEYS, "custom event", kind, value, updated_at)
        body["name"] = name
        return body

    def _purchase(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        limits = self.limits
        product_id = payload.get("product_id")
        if _blank(product_id):
            raise _Reject(R.MISSING_PURCHASE_FIELD, "PAYLOAD.product_id is missing or empty; give the product's id")
        if type(product_id) is not str:
            raise _Reject(
                R.INVALID_FIELD_TYPE,
                f"PAYLOAD.product_id is {_type_name(product_id)}; it must be a string (quote it in the JSON)",
            )
        if len(product_id) > limits.max_value_chars:
            raise _too_long("PAYLOAD.product_id", product_id, limits)
        currency = payload.get("currency")
        if currency is None:
            raise _Reject(
                R.MISSING_PURCHASE_FIELD,
                "PAYLOAD.currency is missing; give a three-letter ISO 4217 code like 'USD'",
            )
        if type(currency) is not str or len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
            shown = _quote(currency) if isinstance(currency, str) else _type_name(currency)
            raise _Reject(
                R.INVALID_CURRENCY,
                f"PAYLOAD.currency {shown} is not a three-letter currency code; use an ISO 4217 code such as 'USD'",
            )
        price = payload.get("price")
        if price is None:
            raise _Reject(R.MISSING_PURCHASE_FIELD, "PAYLOAD.price is missing; give the price as a JSON number")
        price_type = type(price)
        if not (price_type is int or (price_type is float and math.isfinite(price))):
            raise _Reject(
                R.INVALID_PRICE,
                f"PAYLOAD.price is {_type_name(price)}"
                + (f" ({_quote(price)})" if isinstance(price, str) else "")
                + "; it must be a JSON number such as 9.99 (not a string or boolean)",
            )
        quantity = payload.get("quantity")
        body = self._common(payload, _PURCHASE_KEYS, "purchase", kind, value, updated_at)
        body["product_id"] = product_id
        body["currency"] = currency.upper()
        body["price"] = price
        if quantity is not None:
            if type(quantity) is not int or not 1 <= quantity <= 100:
                shown = repr(quantity) if type(quantity) in (int, float) else _type_name(quantity)
                raise _Reject(
                    R.INVALID_QUANTITY,
                    f"PAYLOAD.quantity is {shown}; it must be a whole number from 1 to 100",
                )
            body["quantity"] = quantity
        return body

    def _no_payload(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        raise AssertionError("userDeletes rows have no PAYLOAD")  # pragma: no cover

    # -- slow paths -----------------------------------------------------------------------------------------

    def _updated_at(self, value: Any) -> datetime:
        if value is None:
            raise _Reject(R.MISSING_UPDATED_AT, "UPDATED_AT is NULL; every row needs the UTC time it last changed")
        if isinstance(value, datetime):
            return _utc(value)
        raise _Reject(
            R.INVALID_FIELD_TYPE,
            f"UPDATED_AT is {_type_name(value)}, not a timestamp; make the column a TIMESTAMP (UTC)",
        )

    def _updated_at_or_none(self, row: Sequence[Any]) -> datetime | None:
        try:
            value = row[0]
            return _utc(value) if isinstance(value, datetime) else None
        except Exception:
            return None

    def _text(self, value: Any, column: str) -> str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(int(value))
        if isinstance(value, Decimal) and value.is_finite():
            exponent = value.as_tuple().exponent
            if isinstance(exponent, int) and exponent >= 0:
                return str(int(value))
        if isinstance(value, uuid.UUID):
            return str(value)
        raise _Reject(
            R.INVALID_FIELD_TYPE,
            f"{column} is {_type_name(value)}; identifiers must be text (or whole numbers) — cast the "
            "column to a "
            "string",
        )

    def _identifier_too_long(self, column: str, value: str) -> _Reject:
        return _Reject(
            R.VALUE_TOO_LONG,
            f"{column} is {len(value)} characters long; Braze identifiers are at most "
            f"{self.limits.max_value_chars} characters",
        )

    def _too_large(self, size: int) -> _Reject:
        return _Reject(
            R.PAYLOAD_TOO_LARGE,
            f"Payload was greater than 1MB: PAYLOAD is {size} bytes, the limit is "
            f"{self.limits.max_payload_bytes} bytes — split the row or drop fields",
        )

    def _identifier_columns(self) -> list[str]:
        return [c for c in _IDENTIFIER_COLUMNS if self.plan.index(c) is not None]

    def _describe(self, row: Sequence[Any]) -> str:
        """The user a row names, for error reports: best effort, masked, never raises."""
        try:
            shown: list[tuple[str, str]] = []
            for column in _IDENTIFIER_COLUMNS:
                index = self.plan.index(column)
                if index is None or index >= len(row):
                    continue
                value = row[index]
                if _blank(value):
                    continue
                shown.append((column, value if isinstance(value, str) else repr(value)))
            values = dict(shown)
            if EXTERNAL_ID in values:
                return "external_id=" + _shown(values[EXTERNAL_ID])
            if ALIAS_NAME in values and ALIAS_LABEL in values:
                return f"alias={_shown(values[ALIAS_LABEL])}:{_shown(values[ALIAS_NAME])}"
            if ALIAS_NAME in values:
                return "alias_name=" + _shown(values[ALIAS_NAME])
            if ALIAS_LABEL in values:
                return "alias_label=" + _shown(values[ALIAS_LABEL])
            if BRAZE_ID in values:
                return "braze_id=" + _shown(values[BRAZE_ID])
            if EMAIL in values:
                return "email=" + mask_email(values[EMAIL])
            if PHONE in values:
                return "phone=" + mask_phone(values[PHONE])
        except Exception:
            pass
        return ""
