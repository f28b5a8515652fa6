"""One adversarial source table that every warehouse must deliver identically.

Each warehouse's tests create this table with the warehouse's own types (PAYLOAD as its native JSON type where it
has one), sync it to the Braze emulator, and compare what arrived with `EXPECTED_ATTRIBUTES` and the row errors with
`EXPECTED_ROW_ERRORS`: ties, NULLs, unicode, nested payloads, every identifier kind and invalid rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

COLUMNS = ("UPDATED_AT", "EXTERNAL_ID", "ALIAS_NAME", "ALIAS_LABEL", "BRAZE_ID", "EMAIL", "PHONE", "PAYLOAD")


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (UPDATED_AT, EXTERNAL_ID, ALIAS_NAME, ALIAS_LABEL, BRAZE_ID, EMAIL, PHONE, PAYLOAD as a dict, or text for
# rows whose JSON text is itself the point)
ROWS: list[tuple[Any, ...]] = [
    (_at(1), "u-1", None, None, None, None, None, {"plan": "pro", "nickname": None}),
    (_at(2), "u-2", None, None, None, None, None, {"name": "Zoë Ångström 東京 🎉", "score": 1.5}),
    (_at(2), "u-3", None, None, None, None, None, {"address": {"city": "Lisbon", "lines": ["Rua 1", "2º"]}}),
    (_at(2), None, "anon-7", "web_session", None, None, None, {"visits": 3}),
    (_at(3), None, None, None, "5f2a9c0d1e", None, None, {"tier": "gold"}),
    (_at(4), None, None, None, None, "ada@example.com", None, {"opt_in": True}),
    (_at(5), None, None, None, None, None, "+14155550100", {"opt_in": False}),
    (_at(6), "u-1", None, None, None, None, None, {"plan": "enterprise"}),
    (_at(7), None, None, None, None, None, None, {"orphan": True}),
    (_at(8), "u-4", None, None, None, None, None, {"bad key": 1}),
    (_at(9), None, "anon-8", None, None, None, None, {"visits": 1}),
    (_at(10), "u-5", None, None, None, None, None, {"events": [{"id": 1}, {"id": 2}], "n": 10**12}),
    (None, "u-undated", None, None, None, None, None, {"never": "selected"}),  # counted in undatedRows instead
]
UNDATED_ROWS = 1

EXPECTED_ATTRIBUTES: list[dict[str, Any]] = [
    {"external_id": "u-1", "plan": "pro", "nickname": None},
    {"external_id": "u-2", "name": "Zoë Ångström 東京 🎉", "score": 1.5},
    {"external_id": "u-3", "address": {"city": "Lisbon", "lines": ["Rua 1", "2º"]}},
    {"user_alias": {"alias_name": "anon-7", "alias_label": "web_session"}, "_update_existing_only": False, "visits": 3},
    {"braze_id": "5f2a9c0d1e", "tier": "gold"},
    {"email": "ada@example.com", "_update_existing_only": False, "opt_in": True},
    {"phone": "+14155550100", "_update_existing_only": False, "opt_in": False},
    {"external_id": "u-1", "plan": "enterprise"},
    {"external_id": "u-5", "events": [{"id": 1}, {"id": 2}], "n": 10**12},
]

# (reason, identifier) of the rows that must come back as row errors.
EXPECTED_ROW_ERRORS = {
    ("MISSING_IDENTIFIER", ""),
    ("INVALID_KEY", "external_id=u-4"),
    ("ALIAS_INCOMPLETE", "alias_name=anon-8"),
}


def normalise(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects compared without regard to key order; rows tied on UPDATED_AT may arrive in any order."""
    import json

    return sorted(objects, key=lambda o: json.dumps(o, sort_keys=True))
