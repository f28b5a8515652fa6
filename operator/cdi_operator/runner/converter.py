"""Validate each source row and turn it into the Braze object it stands for.

`RowConverter.convert()` turns each row into a `Delivery` (the `/users/track` object, or the identifier for
`/users/delete`) or a `RowError` (reasons in rows.py). `convert()` never raises: any value it cannot use becomes
a `RowError` with a stable reason code, a message that names the column or `PAYLOAD` key and the fix, and the
(masked) user it concerns. Plain rows (a datetime UPDATED_AT and a PAYLOAD of JSON text, or of a flat native
object for attributes) first take a fast path that gives exactly what the general path would, the same
fingerprint bytes and RowErrors included; anything it cannot vouch for is left to the general path
(tests/unit/test_converter_fast_paths.py holds the two to the same result).

Decisions where BRAZE-API.md is silent (strict where it matters, documented here):

- Identifier precedence: EXTERNAL_ID, alias (ALIAS_NAME + ALIAS_LABEL), BRAZE_ID, EMAIL, PHONE. Columns after
  the chosen one are ignored. With no EXTERNAL_ID, a half alias is `ALIAS_INCOMPLETE` even if
  BRAZE_ID/EMAIL/PHONE are set: the row meant the alias, and silently falling through could update another
  profile. Empty or whitespace-only strings count as NULL; other values are sent exactly as stored (no
  trimming or case folding). Integers (and integral `Decimal`s without fraction digits, and UUIDs) become
  text; floats, booleans, etc. are refused.
- Identifiers are "string values" too, so they are held to 255 characters (`VALUE_TOO_LONG`).
- Alias, email and phone objects get `"_update_existing_only": false` (attributes, events and purchases) so
  Braze creates the user; braze_id and external_id objects never get it from us, unless
  `spec.updateExistingOnly` is set: then every attributes object gets `"_update_existing_only": true`, and Braze
  skips rows for users it does not know. A PAYLOAD may set `_update_existing_only` itself (a boolean); its value
  wins.
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
- Identifiers in errors: external_id / braze_id / alias are shown as they are (cut at 64 characters); e-mail
  as `j***@example.com`, phone as `***67`, because status and logs are widely readable.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from cdi_operator.api.models import DataType
from cdi_operator.runner.columns import (
    ALIAS_LABEL,
    ALIAS_NAME,
    BRAZE_ID,
    EMAIL,
    EXTERNAL_ID,
    IDENTIFIER_COLUMNS,
    PHONE,
    ColumnPlan,
)
from cdi_operator.runner.rows import Delivery, Reject, RowError, RowErrorReason, RowLimits
from cdi_operator.runner.values import (
    as_utc,
    blank,
    check_nested,
    clip,
    iso,
    jsonable,
    key_ok,
    key_problem,
    mask_email,
    mask_phone,
    parse_time,
    quote,
    too_long,
    type_name,
)

__all__ = ["RowConverter"]

R = RowErrorReason

_TRACK_IDENTIFIER_KEYS = frozenset({"external_id", "user_alias", "braze_id", "email", "phone"})
_ATTRIBUTE_FLAGS = ("_merge_objects", "_update_existing_only")
_ATTRIBUTE_SPECIAL_KEYS = frozenset({"external_id", "user_alias", "braze_id", "email", "phone", *_ATTRIBUTE_FLAGS})
# keys an attributes PAYLOAD may hold only after a check (email and phone too, in EMAIL and PHONE rows):
# `_plain_row` leaves them to `_convert`
_PLAIN_ATTRIBUTES_REFUSED = frozenset({"external_id", "user_alias", "braze_id", *_ATTRIBUTE_FLAGS})
_EVENT_KEYS = frozenset({"name", "time", "app_id", "properties", "_update_existing_only"})
_PURCHASE_KEYS = frozenset(
    {"product_id", "currency", "price", "quantity", "time", "app_id", "properties", "_update_existing_only"}
)


_TARGETS = {
    DataType.CUSTOM_ATTRIBUTES: "attributes",
    DataType.CUSTOM_EVENTS: "events",
    DataType.PURCHASE_EVENTS: "purchases",
}
_DELETE_TARGETS = {"e": "external_ids", "a": "user_aliases", "b": "braze_ids"}
_TRACK_KEYS = {"e": "external_id", "a": "user_alias", "b": "braze_id", "m": "email", "p": "phone"}
_KEYS_REMEMBERED = 10_000
_SHAPES_REMEMBERED = 1_000
_INT64_MIN = -(2**63)  # the integers `jsonable` passes
_UINT64_MAX = 2**64 - 1
# copied for each fingerprint: cheaper than a new hasher's keyword arguments, the same digest
_FINGERPRINT = hashlib.blake2b(digest_size=8)


def _fingerprint(data: bytes) -> str:
    """The 16 hex characters a row is known by in the watermark (blake2b-64: saved watermarks hold them)."""
    hasher = _FINGERPRINT.copy()
    hasher.update(data)
    return hasher.hexdigest()


def _taken(keys: tuple[str, ...]) -> int:
    """What the JSON text of an object with these keys holds beside any one string value, at least: the keys with
    their quotes and ':', a ',' between members, a character for every other value, the string's own quotes and
    the braces. A string value of the object has at most the text's length less this many characters."""
    return sum(map(len, keys)) + 5 * len(keys) + 2


class RowConverter:
    """Turns rows (values in `plan.columns` order) into Deliveries or RowErrors. Never raises from "
    "`convert()`."""

    def __init__(
        self,
        data_type: DataType,
        plan: ColumnPlan,
        *,
        limits: RowLimits | None = None,
        update_existing_only: bool = False,
    ) -> None:
        self.data_type = DataType(data_type)
        self.plan = plan
        self.limits = limits or RowLimits()
        self.update_existing_only = update_existing_only
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
        self._keys_ok: set[str] = set()  # top-level PAYLOAD keys already found valid: rows repeat the same few
        # top-level PAYLOAD keys (in order) that `_plain_row` found plain → what they take in the text
        self._plain_shapes: dict[tuple[str, ...], int] = {}
        self._attribute_rows = self.data_type == DataType.CUSTOM_ATTRIBUTES
        self._plain = self._plain_row if self._target else None

    # -- public ---------------------------------------------------------------------------------------------

    def convert(self, row: Sequence[Any]) -> Delivery | RowError:
        plain = self._plain
        if plain is not None:
            try:
                delivery = plain(row)
            except Reject as reject:  # `_plain_row` raises one only where `_convert` raises the same
                return RowError(reject.reason, reject.message, self._describe(row), self._updated_at_or_none(row))
            except Exception:  # whatever it is, `_convert` finds it again and says what it is
                delivery = None
            if delivery is not None:
                return delivery
        try:
            return self._convert(row)
        except Reject as reject:
            return RowError(reject.reason, reject.message, self._describe(row), self._updated_at_or_none(row))
        except Exception as exc:  # a row never stops the sync
            return RowError(
                R.INVALID_ROW,
                f"the row could not be converted ({type(exc).__name__}: {clip(str(exc))}); check its values",
                self._describe(row),
                self._updated_at_or_none(row),
            )

    # -- the fast paths -------------------------------------------------------------------------------------

    def _plain_row(self, row: Sequence[Any]) -> Delivery | None:
        """The Delivery of a plain attributes, event or purchase row, or None to leave the row to `_convert`.

        Plain: a datetime UPDATED_AT, an identifier and a PAYLOAD of JSON text (or a flat native dict, for
        attributes); for attributes, also valid top-level keys and no identifier or flag among them (nor
        `email` or `phone` in a row identified by EMAIL or PHONE). The result is exactly `_convert`'s (same
        body, same fingerprint bytes); this path only skips its indirections and, for attributes, checks it can
        prove unneeded. Its only side effects are caches of what was found valid, so returning None (or raising
        anything but a Reject) at any point leaves `_convert` to find and report the row's problem. A Reject
        comes only from the general path's own checks (`_identify`, `_build`, `check_nested`), reached with the
        same values and after the same checks passed as in `_convert`: it is the row's RowError.
        """
        if len(row) != self._width:
            return None
        updated_at = row[0]
        if type(updated_at) is not datetime:
            return None
        if updated_at.tzinfo is not UTC:
            updated_at = as_utc(updated_at)
        limits = self.limits
        index = self._external_id
        value: Any = None if index is None else row[index]
        if type(value) is str and value and len(value) <= limits.max_value_chars and not value.isspace():
            kind = "e"
            key = identity = "e:" + value
        else:
            kind, value, key, identity = self._identify(row)
        text = row[self._payload_index]
        if type(text) is not str:
            if type(text) is dict and self._attribute_rows:
                return self._plain_native(text, kind, value, key, identity, updated_at)
            return None
        try:
            if text.isascii():  # then its UTF-8 is its characters: one encode for the fingerprint, no copy to parse
                if len(text) > limits.max_payload_bytes:
                    return None
                payload = orjson.loads(text)
                fingerprinted = (identity + "\x1e" + text).encode()
            else:
                raw = text.encode()
                if len(raw) > limits.max_payload_bytes:
                    return None
                payload = orjson.loads(raw)
                fingerprinted = identity.encode() + b"\x1e" + raw
        except orjson.JSONDecodeError:
            self._payload(text)  # raises the general path's Reject for the text
            return None
        if type(payload) is not dict:
            return None
        if not self._attribute_rows:  # events and purchases: their own checks, as `_convert` runs them
            body = self._build(payload, kind, value, updated_at)
            return Delivery(self._target, body, key, _fingerprint(fingerprinted), updated_at)
        if len(payload) > limits.max_attributes or (kind in "mp" and ("email" in payload or "phone" in payload)):
            return None
        taken = self._plain_shape(payload)
        if taken is None:
            return None
        max_value = limits.max_value_chars
        # No value is an object or array without a second '{' or any '[' in the text, and none is a string too
        # long when the text has no room for one beside the keys: then there is no need to look at each value.
        if len(text) - taken > max_value or "[" in text or text.find("{", text.find("{") + 1) >= 0:
            for item in payload.values():
                item_type = type(item)
                if (item_type is str and len(item) > max_value) or item_type is dict or item_type is list:
                    if not self._plain_values(payload):
                        return None
                    break
        body = self._identified(payload, kind, value)
        return Delivery(self._target, body, key, _fingerprint(fingerprinted), updated_at)

    def _plain_native(
        self, native: dict[Any, Any], kind: str, value: Any, key: str, identity: str, updated_at: datetime
    ) -> Delivery | None:
        """`_plain_row` for an attributes PAYLOAD given as a dict of text keys and JSON scalars, which `jsonable`
        would copy as they are."""
        limits = self.limits
        if len(native) > limits.max_attributes or (kind in "mp" and ("email" in native or "phone" in native)):
            return None
        max_value = limits.max_value_chars
        for name, item in native.items():
            if type(name) is not str:
                return None
            item_type = type(item)
            if item_type is str:
                if len(item) > max_value:
                    return None
            elif item_type is int:
                if not _INT64_MIN <= item <= _UINT64_MAX:
                    return None
            elif item_type is float:
                if not math.isfinite(item):
                    return None
            elif item_type is not bool and item is not None:
                return None
        if self._plain_shape(native) is None:
            return None
        payload = dict(native)
        raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        if len(raw) > limits.max_payload_bytes:
            return None
        body = self._identified(payload, kind, value)
        return Delivery(self._target, body, key, _fingerprint(identity.encode() + b"\x1e" + raw), updated_at)

    def _plain_shape(self, payload: dict[str, Any]) -> int | None:
        """What the keys of a plain attributes PAYLOAD take in its text (`_taken`, remembered per key order), or
        None when a key is not valid or needs the general path's checks."""
        shapes = self._plain_shapes
        shape = tuple(payload)
        taken = shapes.get(shape)
        if taken is None:
            if not _PLAIN_ATTRIBUTES_REFUSED.isdisjoint(payload) or not self._plain_keys(payload):
                return None
            taken = _taken(shape)
            if len(shapes) < _SHAPES_REMEMBERED:
                shapes[shape] = taken
        return taken

    def _plain_keys(self, payload: dict[str, Any]) -> bool:
        """Whether every top-level key is valid (as `_attributes` checks them, and remembered as it does)."""
        keys_ok = self._keys_ok
        if keys_ok.issuperset(payload):
            return True
        max_key = self.limits.max_key_chars
        for key in payload:
            if key not in keys_ok:
                if not key_ok(key, max_key):
                    return False
                if len(keys_ok) < _KEYS_REMEMBERED:
                    keys_ok.add(key)
        return True

    def _plain_values(self, payload: dict[str, Any]) -> bool:
        """Whether every value of an attributes PAYLOAD is within Braze's limits, checked in `_attributes`'s order
        with its Rejects (but a nested value too large is left to it)."""
        limits = self.limits
        max_value = limits.max_value_chars
        for name, item in payload.items():
            item_type = type(item)
            if item_type is str:
                if len(item) > max_value:
                    raise too_long(f"PAYLOAD.{name}", item, limits)
            elif item_type is dict or item_type is list:
                check_nested(item, f"PAYLOAD.{name}", limits, 1)
                if len(orjson.dumps(item)) > limits.max_nested_attribute_bytes:
                    return False
        return True

    # -- the general path -----------------------------------------------------------------------------------

    def _convert(self, row: Sequence[Any]) -> Delivery:
        if len(row) != self._width:
            raise self._wrong_width(row)
        kind, value, user_key, identity = self._identify(row)
        updated_at = row[0]
        if type(updated_at) is not datetime or updated_at.tzinfo is not UTC:
            updated_at = self._updated_at(updated_at)
        if self._deletes:
            body: Any = value
            if kind not in _DELETE_TARGETS:
                column = EMAIL if kind == "m" else PHONE
                raise Reject(
                    R.UNSUPPORTED_IDENTIFIER,
                    f"the row is identified only by {column}, and Braze cannot delete users by "
                    f"{column.lower()}; set EXTERNAL_ID, ALIAS_NAME with ALIAS_LABEL, or BRAZE_ID",
                )
            return Delivery(_DELETE_TARGETS[kind], body, user_key, _fingerprint(identity.encode()), updated_at)
        payload, raw = self._payload(row[self._payload_index])
        body = self._build(payload, kind, value, updated_at)
        return Delivery(self._target, body, user_key, _fingerprint(identity.encode() + b"\x1e" + raw), updated_at)

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
            name_blank = blank(name)
            label_blank = blank(label)
            if not (name_blank and label_blank):
                if name_blank or label_blank:
                    have, lack = (ALIAS_LABEL, ALIAS_NAME) if name_blank else (ALIAS_NAME, ALIAS_LABEL)
                    raise Reject(
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
            if blank(value):
                continue
            value = self._text(value, column)
            if blank(value):
                continue
            if len(value) > self.limits.max_value_chars:
                raise self._identifier_too_long(column, value)
            identity = f"{kind}:{value}"
            return kind, value, (f"m:{value.lower()}" if kind == "m" else identity), identity
        raise Reject(
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
                raise Reject(
                    R.INVALID_PAYLOAD_JSON,
                    "PAYLOAD text holds invalid Unicode (a lone surrogate); fix the text",
                ) from None
        elif kind is bytes:
            raw = value
        elif kind is dict or isinstance(value, Mapping):
            payload = jsonable(value, "PAYLOAD", 0)
            raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
            if len(raw) > limit:
                raise self._too_large(len(raw))
            return payload, raw
        elif value is None:
            raise Reject(R.MISSING_PAYLOAD, "PAYLOAD is NULL; give a JSON object with the row's fields")
        elif isinstance(value, bytearray | memoryview):
            raw = bytes(value)
        elif isinstance(value, str):
            raw = str(value).encode()
        else:
            raise Reject(
                R.PAYLOAD_NOT_OBJECT,
                f'PAYLOAD is {type_name(value)}; it must be a JSON object such as {{"key": "value"}}',
            )
        if len(raw) > limit:
            raise self._too_large(len(raw))
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if not raw.strip():
                raise Reject(R.MISSING_PAYLOAD, "PAYLOAD is empty; give a JSON object with the row's fields") from None
            raise Reject(R.INVALID_PAYLOAD_JSON, f"PAYLOAD is not valid JSON ({exc}); fix the JSON text") from None
        if type(payload) is not dict:
            raise Reject(
                R.PAYLOAD_NOT_OBJECT,
                f'PAYLOAD is JSON {type_name(payload)}; it must be a JSON object such as {{"key": "value"}}',
            )
        return payload, raw

    def _attributes(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        limits = self.limits
        if len(payload) > limits.max_attributes:
            raise Reject(
                R.TOO_MANY_ATTRIBUTES,
                f"PAYLOAD has {len(payload)} top-level keys; Braze takes at most {limits.max_attributes} "
                "attributes per row — split the row or nest related attributes in an object",
            )
        if not _ATTRIBUTE_SPECIAL_KEYS.isdisjoint(payload):
            self._attribute_special_keys(payload, kind, value)
        max_key = limits.max_key_chars
        max_value = limits.max_value_chars
        keys_ok = self._keys_ok
        for key, item in payload.items():
            if key not in keys_ok:
                if not key or len(key) > max_key or " " in key or "." in key or "$" in key or not key.isprintable():
                    problem = key_problem(key, "PAYLOAD", limits, operators=False)
                    if problem is not None:
                        raise problem
                if len(keys_ok) < _KEYS_REMEMBERED:
                    keys_ok.add(key)
            item_type = type(item)
            if item_type is str:
                if len(item) > max_value:
                    raise too_long(f"PAYLOAD.{key}", item, limits)
            elif item_type is dict or item_type is list:
                check_nested(item, f"PAYLOAD.{key}", limits, 1)
                size = len(orjson.dumps(item))
                if size > limits.max_nested_attribute_bytes:
                    raise Reject(
                        R.NESTED_ATTRIBUTE_TOO_LARGE,
                        f"PAYLOAD.{key} is {size} bytes as JSON; a nested attribute is at most "
                        f"{limits.max_nested_attribute_bytes} bytes — split it or drop fields",
                    )
        return self._identified(payload, kind, value)

    def _identified(self, payload: dict[str, Any], kind: str, value: Any) -> dict[str, Any]:
        """The attributes object: the PAYLOAD with the row's identifier and, unless it sets its own,
        `_update_existing_only`: true when the integration asks for it, else false for a row identified by alias,
        email or phone, so that Braze creates its profile (see the module docstring)."""
        payload[_TRACK_KEYS[kind]] = value
        if "_update_existing_only" not in payload:
            if self.update_existing_only:
                payload["_update_existing_only"] = True
            elif kind in "amp":
                payload["_update_existing_only"] = False
        return payload

    def _attribute_special_keys(self, payload: dict[str, Any], kind: str, value: Any) -> None:
        for key in _ATTRIBUTE_FLAGS:
            if key in payload and type(payload[key]) is not bool:
                raise Reject(
                    R.INVALID_FIELD_TYPE,
                    f"PAYLOAD.{key} is {type_name(payload[key])}; it must be true or false",
                )
        for key in ("external_id", "user_alias", "braze_id"):
            if key in payload:
                raise Reject(
                    R.IDENTIFIER_IN_PAYLOAD,
                    f"PAYLOAD key {key!r} is an identifier; identifiers come from the identifier columns "
                    f"({', '.join(self._identifier_columns())}) — remove it from PAYLOAD",
                )
        if "email" in payload:
            email = payload["email"]
            if kind == "p":
                raise Reject(
                    R.IDENTIFIER_IN_PAYLOAD,
                    "PAYLOAD key 'email' would make Braze identify this PHONE row by e-mail; remove it, or "
                    "identify the row by EXTERNAL_ID to set both",
                )
            if kind == "m" and not (isinstance(email, str) and email.lower() == value.lower()):
                raise Reject(
                    R.IDENTIFIER_IN_PAYLOAD,
                    "PAYLOAD key 'email' differs from the EMAIL column that identifies this row; remove "
                    "it, or "
                    "identify the row by EXTERNAL_ID to change the e-mail address",
                )
        if "phone" in payload and kind == "p" and payload["phone"] != value:
            raise Reject(
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
                    raise Reject(
                        R.IDENTIFIER_IN_PAYLOAD,
                        f"PAYLOAD key {key!r} is an identifier; identifiers come from the identifier columns "
                        f"({', '.join(self._identifier_columns())}) — remove it from PAYLOAD",
                    )
                problem = key_problem(key, "PAYLOAD", self.limits, operators=False)
                if problem is not None:
                    raise problem
                raise Reject(
                    R.INVALID_KEY,
                    f"PAYLOAD key {quote(key)} is not a field of a {what} (allowed: "
                    f"{', '.join(sorted(allowed))}); move custom data under 'properties'",
                )
        body: dict[str, Any] = {_TRACK_KEYS[kind]: value}
        moment = payload.get("time")
        body["time"] = iso(updated_at) if moment is None else parse_time(moment, "time")
        app_id = payload.get("app_id")
        if app_id is not None:
            if type(app_id) is not str:
                raise Reject(R.INVALID_FIELD_TYPE, f"PAYLOAD.app_id is {type_name(app_id)}; it must be a string")
            if len(app_id) > self.limits.max_value_chars:
                raise too_long("PAYLOAD.app_id", app_id, self.limits)
            body["app_id"] = app_id
        properties = payload.get("properties")
        if properties is not None:
            if type(properties) is not dict:
                raise Reject(
                    R.INVALID_FIELD_TYPE,
                    f"PAYLOAD.properties is {type_name(properties)}; it must be a JSON object",
                )
            if properties:
                self._check_properties(properties)
            body["properties"] = properties
        flag = payload.get("_update_existing_only")
        if flag is not None:
            if type(flag) is not bool:
                raise Reject(
                    R.INVALID_FIELD_TYPE,
                    f"PAYLOAD._update_existing_only is {type_name(flag)}; it must be true or false",
                )
            body["_update_existing_only"] = flag
        elif kind in "amp":
            body["_update_existing_only"] = False
        return body

    def _check_properties(self, properties: dict[str, Any]) -> None:
        limits = self.limits
        nested = False
        keys_ok = self._keys_ok  # the same rule as for the top level of an attributes PAYLOAD
        for key, item in properties.items():
            if key not in keys_ok:
                if not key_ok(key, limits.max_key_chars):
                    problem = key_problem(key, "PAYLOAD.properties", limits, operators=False)
                    if problem is not None:
                        raise problem
                if len(keys_ok) < _KEYS_REMEMBERED:
                    keys_ok.add(key)
            item_type = type(item)
            if item_type is str:
                if len(item) > limits.max_value_chars:
                    raise too_long(f"PAYLOAD.properties.{key}", item, limits)
            elif item_type is dict or item_type is list:
                nested = True
                check_nested(item, f"PAYLOAD.properties.{key}", limits, 1)
        if nested:
            size = len(orjson.dumps(properties))
            if size > limits.max_properties_bytes:
                raise Reject(
                    R.PROPERTIES_TOO_LARGE,
                    f"PAYLOAD.properties is {size} bytes as JSON; properties holding arrays or objects are "
                    "at "
                    f"most {limits.max_properties_bytes} bytes — drop or flatten some",
                )

    def _event(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        name = payload.get("name")
        if type(name) is not str or not name or name.isspace():
            if name is None or isinstance(name, str):
                raise Reject(R.MISSING_EVENT_NAME, "PAYLOAD.name is missing or empty; give the custom event's name")
            raise Reject(R.INVALID_FIELD_TYPE, f"PAYLOAD.name is {type_name(name)}; it must be a string")
        if len(name) > self.limits.max_value_chars:
            raise too_long("PAYLOAD.name", name, self.limits)
        body = self._common(payload, _EVENT_KEYS, "custom event", kind, value, updated_at)
        body["name"] = name
        return body

    def _purchase(self, payload: dict[str, Any], kind: str, value: Any, updated_at: datetime) -> dict[str, Any]:
        limits = self.limits
        product_id = payload.get("product_id")
        if blank(product_id):
            raise Reject(R.MISSING_PURCHASE_FIELD, "PAYLOAD.product_id is missing or empty; give the product's id")
        if type(product_id) is not str:
            raise Reject(
                R.INVALID_FIELD_TYPE,
                f"PAYLOAD.product_id is {type_name(product_id)}; it must be a string (quote it in the JSON)",
            )
        if len(product_id) > limits.max_value_chars:
            raise too_long("PAYLOAD.product_id", product_id, limits)
        currency = payload.get("currency")
        if currency is None:
            raise Reject(
                R.MISSING_PURCHASE_FIELD,
                "PAYLOAD.currency is missing; give a three-letter ISO 4217 code like 'USD'",
            )
        if type(currency) is not str or len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
            shown = quote(currency) if isinstance(currency, str) else type_name(currency)
            raise Reject(
                R.INVALID_CURRENCY,
                f"PAYLOAD.currency {shown} is not a three-letter currency code; use an ISO 4217 code such as 'USD'",
            )
        price = payload.get("price")
        if price is None:
            raise Reject(R.MISSING_PURCHASE_FIELD, "PAYLOAD.price is missing; give the price as a JSON number")
        price_type = type(price)
        if not (price_type is int or (price_type is float and math.isfinite(price))):
            raise Reject(
                R.INVALID_PRICE,
                f"PAYLOAD.price is {type_name(price)}"
                + (f" ({quote(price)})" if isinstance(price, str) else "")
                + "; it must be a JSON number such as 9.99 (not a string or boolean)",
            )
        quantity = payload.get("quantity")
        body = self._common(payload, _PURCHASE_KEYS, "purchase", kind, value, updated_at)
        body["product_id"] = product_id
        body["currency"] = currency.upper()
        body["price"] = price
        if quantity is not None:
            if type(quantity) is not int or not 1 <= quantity <= 100:
                shown = repr(quantity) if type(quantity) in (int, float) else type_name(quantity)
                raise Reject(
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
            raise Reject(R.MISSING_UPDATED_AT, "UPDATED_AT is NULL; every row needs the UTC time it last changed")
        if isinstance(value, datetime):
            return as_utc(value)
        raise Reject(
            R.INVALID_FIELD_TYPE,
            f"UPDATED_AT is {type_name(value)}, not a timestamp; make the column a TIMESTAMP (UTC)",
        )

    def _updated_at_or_none(self, row: Sequence[Any]) -> datetime | None:
        try:
            value = row[0]
            return as_utc(value) if isinstance(value, datetime) else None
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
        raise Reject(
            R.INVALID_FIELD_TYPE,
            f"{column} is {type_name(value)}; identifiers must be text (or whole numbers) — cast the "
            "column to a "
            "string",
        )

    def _wrong_width(self, row: Sequence[Any]) -> Reject:
        return Reject(
            R.INVALID_ROW,
            f"the row has {len(row)} values but {self._width} columns were selected "
            f"({', '.join(self.plan.columns)}); this is a warehouse adapter bug, please report it",
        )

    def _identifier_too_long(self, column: str, value: str) -> Reject:
        return Reject(
            R.VALUE_TOO_LONG,
            f"{column} is {len(value)} characters long; Braze identifiers are at most "
            f"{self.limits.max_value_chars} characters",
        )

    def _too_large(self, size: int) -> Reject:
        return Reject(
            R.PAYLOAD_TOO_LARGE,
            f"Payload was greater than 1MB: PAYLOAD is {size} bytes, the limit is "
            f"{self.limits.max_payload_bytes} bytes — split the row or drop fields",
        )

    def _identifier_columns(self) -> list[str]:
        return [c for c in IDENTIFIER_COLUMNS if self.plan.index(c) is not None]

    def _describe(self, row: Sequence[Any]) -> str:
        """The user a row names, for error reports: best effort, masked, never raises."""
        try:
            shown: list[tuple[str, str]] = []
            for column in IDENTIFIER_COLUMNS:
                index = self.plan.index(column)
                if index is None or index >= len(row):
                    continue
                value = row[index]
                if blank(value):
                    continue
                shown.append((column, value if isinstance(value, str) else repr(value)))
            values = dict(shown)
            if EXTERNAL_ID in values:
                return "external_id=" + clip(values[EXTERNAL_ID])
            if ALIAS_NAME in values and ALIAS_LABEL in values:
                return f"alias={clip(values[ALIAS_LABEL])}:{clip(values[ALIAS_NAME])}"
            if ALIAS_NAME in values:
                return "alias_name=" + clip(values[ALIAS_NAME])
            if ALIAS_LABEL in values:
                return "alias_label=" + clip(values[ALIAS_LABEL])
            if BRAZE_ID in values:
                return "braze_id=" + clip(values[BRAZE_ID])
            if EMAIL in values:
                return "email=" + mask_email(values[EMAIL])
            if PHONE in values:
                return "phone=" + mask_phone(values[PHONE])
        except Exception:
            pass
        return ""
