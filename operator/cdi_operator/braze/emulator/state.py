"""What the emulator has accepted: the objects, deletes, profiles, catalogs, counts and the log of requests."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cdi_operator.braze.emulator.rules import FLAG_KEYS, TRACK_ARRAYS


@dataclass(frozen=True)
class RequestRecord:
    at: float  # time.time() when the request arrived and was counted in its rate-limit window
    path: str
    status: int  # 0: connection closed without a response
    objects: int  # objects (or identifiers) accepted
    fault: str | None


@dataclass
class Catalog:
    """A catalog as the test created it (its fields and their types) and the items it holds, by id."""

    fields: dict[str, str]
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def listing(self, name: str) -> dict[str, Any]:
        """The catalog as `GET /catalogs` shows it."""
        return {
            "name": name,
            "description": "",
            "fields": [{"name": "id", "type": "string"}] + [{"name": k, "type": v} for k, v in self.fields.items()],
            "num_items": len(self.items),
        }


class Records:
    """The emulator's state; not locked itself (the emulator holds its lock around every use)."""

    def __init__(self, request_log_size: int) -> None:
        self.tracked: dict[str, list[dict[str, Any]]] = {name: [] for name in TRACK_ARRAYS}
        self.deleted: list[Any] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self.catalogs: dict[str, Catalog] = {}
        self.skipped: list[dict[str, Any]] = []  # objects for unknown users with _update_existing_only: true
        self.counts: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.first_request_at: float | None = None  # RequestRecord.at of the first and the last request
        self.last_request_at: float | None = None

    def finish(self, path: str, status: int, objects: int, fault: str | None, at: float | None = None) -> None:
        """Record a `/users/*` request the emulator answered (status 0: closed without a response)."""
        self.in_flight -= 1
        self.status_counts[status] += 1
        self.counts["requests"] += 1
        at = time.time() if at is None else at
        if self.first_request_at is None:
            self.first_request_at = at
        self.last_request_at = at
        self.requests.append(RequestRecord(at, path, status, objects, fault))

    def track(self, array: str, obj: dict[str, Any], key: str, id_kind: str, *, keep: bool) -> None:
        """Count an accepted object; with `keep`, store it and update the profile it names."""
        self.counts[array] += 1
        if keep:
            self.tracked[array].append(obj)
            profile = self.profiles.get(key)
            if profile is None and creates_user(obj, id_kind):
                profile = self.profiles[key] = {}
            elif profile is None and obj.get("_update_existing_only") is True:
                self.skipped.append(obj)
            if profile is not None and array == "attributes":
                apply_attributes(profile, obj, id_kind)

    def delete(self, id_type: str, items: list[Any], *, keep: bool) -> None:
        """Count deleted identifiers; with `keep`, store them and drop their profiles."""
        self.counts["deleted"] += len(items)
        if keep:
            self.deleted.extend(items)
            for item in items:
                self.profiles.pop(delete_key(id_type, item), None)


def deep_merge(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_attributes(profile: dict[str, Any], obj: Mapping[str, Any], id_kind: str) -> None:
    merge = obj.get("_merge_objects") is True
    for key, value in obj.items():
        if key in FLAG_KEYS or key == id_kind or key in ("external_id", "user_alias", "braze_id"):
            continue
        if value is None:
            profile.pop(key, None)
        elif merge and isinstance(value, dict) and isinstance(profile.get(key), dict):
            profile[key] = deep_merge(profile[key], value)
        else:
            profile[key] = value


def delete_key(id_type: str, identifier: Any) -> str:
    if id_type == "external_ids":
        return str(identifier)
    if id_type == "braze_ids":
        return f"braze_id:{identifier}"
    return f"alias:{identifier['alias_label']}:{identifier['alias_name']}"


def creates_user(obj: Mapping[str, Any], id_kind: str) -> bool:
    if id_kind == "external_id":
        return obj.get("_update_existing_only") is not True
    if id_kind == "braze_id":
        return False
    return obj.get("_update_existing_only") is False
