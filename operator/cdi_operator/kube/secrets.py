"""Secret values: the base64 of a Secret's `data`, decoded and encoded in this one place."""

from __future__ import annotations

import base64
import binascii


def decode(value: str | bytes) -> str | None:
    """The UTF-8 text in a Secret's `data` value; None when it is not base64 of UTF-8 text."""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def encode(value: str) -> str:
    """`value` as a Secret's `data` holds it."""
    return base64.b64encode(value.encode("utf-8")).decode("ascii")
