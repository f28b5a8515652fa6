"""A Braze REST API emulator (`/users/track`, `/users/delete`) with fault injection for tests, benchmarks, `cdi demo`.

It follows BRAZE-API.md and validates every object with its own rules, written apart from the runner's validator so
that a test passing against it means something. Three ways to run it:

- in a thread: `with BrazeEmulator(api_key="k") as emu:` serves on 127.0.0.1 at a free port, `emu.url`; the
  accessors (`tracked()`, `deleted()`, `profiles`, `status_counts`, `inject()`, ...) are thread-safe;
- in the running event loop: `await emu.start_async()` ... `await emu.stop_async()`;
- as a process: `python -m cdi_operator.braze.emulator --port 0 --api-key K` prints
  `Braze emulator listening on http://127.0.0.1:PORT` and serves until SIGTERM/SIGINT. Subprocess users drive it
  through `GET /_emulator/state`, `POST /_emulator/faults` and `POST /_emulator/reset` (no auth: loopback only).

Decisions where BRAZE-API.md is silent:

- Identifier: at most one of `external_id`, `user_alias`, `braze_id`; without any of them `email`, else `phone`
  identifies the user (email wins). Next to a stronger identifier, `email` / `phone` are plain profile attributes.
- Profiles (`emu.profiles`) are keyed by the external id itself, and otherwise by `alias:<label>:<name>`,
  `braze_id:<id>`, `email:<address>`, `phone:<number>`. As in Braze, an alias / email / phone object creates
  the profile only with `"_update_existing_only": false`, and a `braze_id` object only updates an existing profile
  (seed one with `add_profile()`); the object is accepted either way. Only attributes are kept in a profile: `null`
  removes one, `_merge_objects: true` deep-merges object values, anything else replaces the value.
- Events and purchases are strict: a top-level key that is not a field of the object is an error. Purchases need
  `time` as the REST API says (the table's default to UPDATED_AT is the runner's job).
- Rate limits use fixed windows aligned to multiples of the window length since the epoch, so
  `X-RateLimit-Reset` (rounded up to a whole second) is where the window really ends when windows are whole seconds.
  Every request to an endpoint counts, including the ones refused.
- Faults are consumed in arrival order by `/users/*` requests, queued ones first, then the random mode. Kinds:
  `http500`, `http502`, `http503`, `http429` (nothing applied), `slow` (waits, then handles the request normally:
  a client that timed out meanwhile still gets its objects applied), `drop` (reads the body, closes the connection
  without a response, nothing applied), `drop_after` (applies the request, then closes the connection: delivered,
  ack lost), `queued` (202 `{"message": "queued"}`, objects applied). `status_counts` counts a closed connection
  under 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import orjson
from aiohttp import web

__all__ = ["FAULT_KINDS", "BrazeEmulator", "RequestRecord", "main"]

FAULT_KINDS = ("http500", "http502", "http503", "http429", "slow", "drop", "drop_after", "queued")
TRACK_ARRAYS = ("attributes", "events", "purchases")
DELETE_ID_TYPES = ("external_ids", "user_aliases", "braze_ids")
DELETE_LIMIT = 50
STATE_OBJECT_LIMIT = 10_000  # GET /_emulator/state leaves the objects out above this many
MAX_LENGTH = 255
MAX_ATTRIBUTES = 250

LimitMode = Literal["total", "perArray"]

_IDENTIFIER_KEYS = frozenset(("external_id", "user_alias", "braze_id", "email", "phone"))
_FLAG_KEYS = frozenset(("_update_existing_only", "_merge_objects"))
_OPERATOR_KEYS = frozenset(
    ("$add", "$update", "$remove", "$identifier_key", "$identifier_value", "$new_object", "$time")
)
_EVENT_FIELDS = frozenset(("name", "time", "app_id", "properties", "_update_existing_only")) | _IDENTIFIER_KEYS
_PURCHASE_FIELDS = (
    frozenset(("product_id", "currency", "price", "quantity", "time", "app_id", "properties", "_update_existing_only"))
    | _IDENTIFIER_KEYS
)
_STATUS_MESSAGES = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True)
class RequestRecord:
    at: float  # time.time() when the response was decided
    path: str
    status: int  # 0: connection closed without a response
    objects: int  # objects (or identifiers) accepted
    fault: str | None


@dataclass(frozen=True)
class _Fault:
    kind: str
    delay: float


class _Window:
    """A fixed-window request counter, as Braze's per-workspace limits are."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._start = -1.0
        self._count = 0

    def hit(self, now: float) -> tuple[bool, int, int]:
        """Count one request: (allowed, remaining, reset epoch second)."""
        start = math.floor(now / self.seconds) * self.seconds
        if start != self._start:
            self._start, self._count = start, 0
        self._count += 1
        return self._count <= self.limit, max(0, self.limit - self._count), math.ceil(start + self.seconds)

    def peek(self, now: float) -> tuple[int, int]:
        start = math.floor(now / self.seconds) * self.seconds
        used = self._count if start == self._start else 0
        return max(0, self.limit - used), math.ceil(start + self.seconds)


# --- validation (independent of the runner's own) -----------------------------------------------------------------


def _identify(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(profile key, kind) of the object, or ("", error text)."""
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


def _value_error(value: Any) -> str | None:
    if isinstance(value, str):
        return f"String value is longer than {MAX_LENGTH} characters" if len(value) > MAX_LENGTH else None
    if isinstance(value, dict):
        for key, item in value.items():
            error = _key_error(key, nested=True) or _value_error(item)
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
    for flag in _FLAG_KEYS:
        if flag in obj and not isinstance(obj[flag], bool):
            return f"'{flag}' must be a boolean"
    return None


def _attributes_error(obj: Mapping[str, Any], id_kind: str) -> str | None:
    custom = 0
    for key, value in obj.items():
        if key in _FLAG_KEYS or key == id_kind:
            continue
        if key in _IDENTIFIER_KEYS and key not in ("email", "phone"):
            continue
        custom += 1
        error = _key_error(key, nested=False) or _value_error(value)
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


def _event_error(obj: Mapping[str, Any]) -> str | None:
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


def _purchase_error(obj: Mapping[str, Any]) -> str | None:
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


def _deep_merge(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_attributes(profile: dict[str, Any], obj: Mapping[str, Any], id_kind: str) -> None:
    merge = obj.get("_merge_objects") is True
    for key, value in obj.items():
        if key in _FLAG_KEYS or key == id_kind or key in ("external_id", "user_alias", "braze_id"):
            continue
        if value is None:
            profile.pop(key, None)
        elif merge and isinstance(value, dict) and isinstance(profile.get(key), dict):
            profile[key] = _deep_merge(profile[key], value)
        else:
            profile[key] = value


def _delete_key(id_type: str, identifier: Any) -> str:
    if id_type == "external_ids":
        return str(identifier)
    if id_type == "braze_ids":
        return f"braze_id:{identifier}"
    return f"alias:{identifier['alias_label']}:{identifier['alias_name']}"


def _delete_item_error(id_type: str, item: Any) -> str | None:
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


# --- the emulator -------------------------------------------------------------------------------------------------


class BrazeEmulator:
    def __init__(
        self,
        api_key: str = "emulator-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        track_limit: int = 75,
        limit_mode: LimitMode = "total",
        track_rate_limit: int = 3000,
        track_rate_window: float = 3.0,
        delete_rate_limit: int = 20_000,
        delete_rate_window: float = 60.0,
        retry_after: bool = False,
        slow_delay: float = 2.0,
        latency: float = 0.0,
        seed: int | None = None,
        request_log_size: int = 100_000,
    ) -> None:
        if limit_mode not in ("total", "perArray"):
            raise ValueError("limit_mode must be 'total' or 'perArray'")
        self.api_key = api_key
        self.host = host
        self.port = port
        self.record = record
        self.track_limit = track_limit
        self.limit_mode: LimitMode = limit_mode
        self.retry_after = retry_after
        self.slow_delay = slow_delay
        self.latency = latency  # every response waits this long: a real Braze round trip is tens of milliseconds
        self._auth = f"Bearer {api_key}"
        self._lock = threading.Lock()
        self._track_window = _Window(track_rate_limit, track_rate_window)
        self._delete_window = _Window(delete_rate_limit, delete_rate_window)
        self._random = random.Random(seed)
        self._fault_probabilities: dict[str, float] = {}
        self._random_delay: float | None = None
        self._faults: deque[_Fault] = deque()
        self._reject_external_ids: frozenset[str] = frozenset()
        self._request_log_size = request_log_size
        self._init_records()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def _init_records(self) -> None:
        self._tracked: dict[str, list[dict[str, Any]]] = {name: [] for name in TRACK_ARRAYS}
        self._deleted: list[Any] = []
        self._profiles: dict[str, dict[str, Any]] = {}
        self._counts: Counter[str] = Counter()
        self._status_counts: Counter[int] = Counter()
        self._requests: deque[RequestRecord] = deque(maxlen=self._request_log_size)
        self._in_flight = 0
        self._peak_in_flight = 0

    def __repr__(self) -> str:
        return f"BrazeEmulator(url={self.url!r})"

    # --- thread-safe accessors ------------------------------------------------------------------------------------

    def tracked(self, array: str) -> list[dict[str, Any]]:
        """The accepted objects of `array` ("attributes", "events", "purchases") in arrival order."""
        with self._lock:
            return list(self._tracked[array])

    def deleted(self) -> list[Any]:
        """Every deleted identifier (strings, alias objects) in arrival order."""
        with self._lock:
            return list(self._deleted)

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """A copy of the merged attribute profiles (see the module docstring for the keys)."""
        with self._lock:
            return {key: dict(profile) for key, profile in self._profiles.items()}

    @property
    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._status_counts)

    @property
    def counts(self) -> dict[str, int]:
        """Accepted objects per array, "deleted" identifiers, and "requests"; kept even with record=False."""
        with self._lock:
            return dict(self._counts)

    @property
    def peak_in_flight(self) -> int:
        """The most `/users/*` requests the server was handling at once."""
        with self._lock:
            return self._peak_in_flight

    def requests(self) -> list[RequestRecord]:
        """The last `request_log_size` `/users/*` requests, in the order their responses were decided."""
        with self._lock:
            return list(self._requests)

    @property
    def reject_external_ids(self) -> frozenset[str]:
        return self._reject_external_ids

    @reject_external_ids.setter
    def reject_external_ids(self, ids: Iterable[str]) -> None:
        self._reject_external_ids = frozenset(ids)

    def add_profile(self, key: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Create a profile (e.g. `braze_id:<id>`, which Braze never creates from /users/track)."""
        with self._lock:
            self._profiles.setdefault(key, {}).update(attributes or {})

    def inject(self, kind: str, times: int = 1, *, delay: float | None = None) -> None:
        """Queue `times` faults of `kind` for the next `/users/*` requests."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        fault = _Fault(kind, self.slow_delay if delay is None else delay)
        with self._lock:
            self._faults.extend([fault] * times)

    def set_random_faults(
        self, probabilities: Mapping[str, float], seed: int | None = None, *, delay: float | None = None
    ) -> None:
        """Give each request a fault of each kind with the given probability (their sum at most 1)."""
        unknown = set(probabilities) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        if sum(probabilities.values()) > 1.0 + 1e-9 or any(p < 0 for p in probabilities.values()):
            raise ValueError("fault probabilities must be non-negative and sum to at most 1")
        with self._lock:
            self._fault_probabilities = {k: float(v) for k, v in sorted(probabilities.items()) if v > 0}
            self._random_delay = delay
            if seed is not None:
                self._random.seed(seed)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fault_probabilities = {}

    def reset(self) -> None:
        """Forget every object, profile, count and fault (the rate-limit windows are kept)."""
        with self._lock:
            self._faults.clear()
            self._fault_probabilities = {}
            self._reject_external_ids = frozenset()
            in_flight = self._in_flight
            self._init_records()
            self._in_flight = in_flight

    def state(self, objects: bool = True) -> dict[str, Any]:
        """A JSON-ready summary; the objects and profiles only when recorded and not more than STATE_OBJECT_LIMIT."""
        with self._lock:
            counts = dict(self._counts)
            state: dict[str, Any] = {
                "status_counts": {str(k): v for k, v in sorted(self._status_counts.items())},
                "counts": counts,
                "peak_in_flight": self._peak_in_flight,
                "pending_faults": [f.kind for f in self._faults],
                "random_faults": dict(self._fault_probabilities),
                "record": self.record,
            }
            total = sum(len(v) for v in self._tracked.values()) + len(self._deleted)
            if objects and self.record and total <= STATE_OBJECT_LIMIT:
                state["objects"] = {name: list(items) for name, items in self._tracked.items()}
                state["objects"]["deleted"] = list(self._deleted)
                state["profiles"] = {key: dict(p) for key, p in self._profiles.items()}
            return state

    # --- serving --------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_post("/users/track", self._handle_track)
        app.router.add_post("/users/delete", self._handle_delete)
        app.router.add_get("/_emulator/state", self._handle_state)
        app.router.add_post("/_emulator/faults", self._handle_faults)
        app.router.add_post("/_emulator/reset", self._handle_reset)
        return app

    async def start_async(self) -> str:
        """Serve in the running event loop; returns the base URL."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            await runner.cleanup()
            raise
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        self._runner = runner
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    async def stop_async(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def start(self) -> str:
        """Serve from a daemon thread with its own event loop; returns the base URL."""
        if self._thread is not None:
            return self.url
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=serve, name="braze-emulator", daemon=True)
        thread.start()
        started.wait()
        if failure:
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self.url

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread, self._loop = None, None

    def __enter__(self) -> BrazeEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- request handling -----------------------------------------------------------------------------------------

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            if self._faults:
                return self._faults.popleft()
            if self._fault_probabilities:
                draw = self._random.random()
                for kind, probability in self._fault_probabilities.items():
                    if draw < probability:
                        delay = self.slow_delay if self._random_delay is None else self._random_delay
                        return _Fault(kind, delay)
                    draw -= probability
        return None

    def _finish(self, path: str, status: int, objects: int, fault: _Fault | None) -> None:
        # Called with the lock held.
        self._in_flight -= 1
        self._status_counts[status] += 1
        self._counts["requests"] += 1
        self._requests.append(RequestRecord(time.time(), path, status, objects, fault.kind if fault else None))

    async def _handle_track(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._track_window, self._apply_track)

    async def _handle_delete(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._delete_window, self._apply_delete)

    async def _handle(
        self,
        request: web.Request,
        window: _Window,
        apply: Any,
    ) -> web.StreamResponse:
        path = request.path
        fault = self._next_fault()
        try:
            body = await request.read()
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif self.latency:
                await asyncio.sleep(self.latency)
        except Exception:  # the client went away mid-body
            with self._lock:
                self._finish(path, 0, 0, fault)
            return _drop(request)
        except BaseException:
            with self._lock:
                self._finish(path, 0, 0, fault)
            raise
        kind = fault.kind if fault is not None else None
        with self._lock:
            now = time.time()
            if kind is not None and kind.startswith("http5"):
                status = int(kind[4:])
                self._finish(path, status, 0, fault)
                return _json(status, {"message": _STATUS_MESSAGES[status]})
            if kind == "drop":
                self._finish(path, 0, 0, fault)
                return _drop(request)
            if kind == "http429":
                remaining, reset = window.peek(now)
                self._finish(path, 429, 0, fault)
                return self._rate_limited(window, reset, now)
            if request.headers.get("Authorization") != self._auth:
                allowed, remaining, reset = window.hit(now)
                self._finish(path, 401, 0, fault)
                message = "Invalid API key" if "Authorization" in request.headers else "Missing API key"
                return _json(401, {"message": message}, _limit_headers(window, remaining, reset))
            allowed, remaining, reset = window.hit(now)
            if not allowed:
                self._finish(path, 429, 0, fault)
                return self._rate_limited(window, reset, now)
            headers = _limit_headers(window, remaining, reset)
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._finish(path, 400, 0, fault)
                return _json(400, {"message": "Invalid JSON in request body"}, headers)
            status, response, accepted = apply(parsed)
            if status == 201 and kind == "queued":
                status, response = 202, {"message": "queued"}
            if kind == "drop_after":
                self._finish(path, 0, accepted, fault)
                return _drop(request)
            self._finish(path, status, accepted, fault)
            return _json(status, response, headers)

    def _rate_limited(self, window: _Window, reset: int, now: float) -> web.Response:
        headers = _limit_headers(window, 0, reset)
        if self.retry_after:
            headers["Retry-After"] = str(max(0, math.ceil(reset - now)))
        return _json(429, {"message": "API Rate Limit Exceeded"}, headers)

    def _apply_track(self, body: Any) -> tuple[int, dict[str, Any], int]:
        # Called with the lock held.
        if not isinstance(body, dict):
            return 400, {"message": "Request body must be a JSON object"}, 0
        arrays: list[tuple[str, list[Any]]] = []
        for name in TRACK_ARRAYS:
            items = body.get(name)
            if items is None:
                continue
            if not isinstance(items, list):
                return 400, {"message": f"'{name}' must be an array"}, 0
            arrays.append((name, items))
        sizes = [len(items) for _, items in arrays]
        if not sizes or sum(sizes) == 0:
            return 400, {"message": "Missing 'attributes', 'events' or 'purchases'"}, 0
        too_many = sum(sizes) > self.track_limit if self.limit_mode == "total" else max(sizes) > self.track_limit
        if too_many:
            return 400, {"message": "Max Input Length Exceeded"}, 0
        errors: list[dict[str, Any]] = []
        processed = {name: 0 for name in TRACK_ARRAYS}
        reject = self._reject_external_ids
        for name, items in arrays:  # already in Braze's order: attributes, events, purchases
            for index, obj in enumerate(items):
                error = self._track_object(name, obj, reject)
                if error is not None:
                    errors.append({"type": error, "input_array": name, "index": index})
                else:
                    processed[name] += 1
        response: dict[str, Any] = {"message": "success"}
        for name in TRACK_ARRAYS:
            if processed[name] or name in body:
                response[f"{name}_processed"] = processed[name]
        if errors:
            response["errors"] = errors
        return 201, response, sum(processed.values())

    def _track_object(self, array: str, obj: Any, reject: frozenset[str]) -> str | None:
        if not isinstance(obj, dict):
            return "Each object must be a JSON object"
        key, id_kind = _identify(obj)
        if not key:
            return id_kind
        if reject and id_kind == "external_id" and obj["external_id"] in reject:
            return "Rejected by the emulator (reject_external_ids)"
        if array == "attributes":
            error = _attributes_error(obj, id_kind)
        elif array == "events":
            error = _event_error(obj)
        else:
            error = _purchase_error(obj)
        if error is not None:
            return error
        self._counts[array] += 1
        if self.record:
            self._tracked[array].append(obj)
            profile = self._profiles.get(key)
            if profile is None and _creates_user(obj, id_kind):
                profile = self._profiles[key] = {}
            if profile is not None and array == "attributes":
                _apply_attributes(profile, obj, id_kind)
        return None

    def _apply_delete(self, body: Any) -> tuple[int, dict[str, Any], int]:
        # Called with the lock held.
        if not isinstance(body, dict):
            return 400, {"message": "Request body must be a JSON object"}, 0
        given = [name for name in DELETE_ID_TYPES if body.get(name) is not None]
        if len(given) != 1:
            return 400, {"message": "Exactly one of 'external_ids', 'user_aliases' or 'braze_ids' is required"}, 0
        id_type = given[0]
        items = body[id_type]
        if not isinstance(items, list) or not items:
            return 400, {"message": f"'{id_type}' must be a non-empty array"}, 0
        if len(items) > DELETE_LIMIT:
            return 400, {"message": "Max Input Length Exceeded"}, 0
        for item in items:
            error = _delete_item_error(id_type, item)
            if error:
                return 400, {"message": error}, 0
        self._counts["deleted"] += len(items)
        if self.record:
            self._deleted.extend(items)
            for item in items:
                self._profiles.pop(_delete_key(id_type, item), None)
        return 201, {"message": "success", "deleted": len(items)}, len(items)

    # --- admin API ------------------------------------------------------------------------------------------------

    async def _handle_state(self, request: web.Request) -> web.Response:
        objects = request.query.get("objects", "1") not in ("0", "false", "no")
        return _json(200, self.state(objects))

    async def _handle_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if body.get("clear"):
                self.clear_faults()
            if "kind" in body:
                delay = body.get("delay")
                self.inject(str(body["kind"]), int(body.get("times", 1)), delay=None if delay is None else float(delay))
            if "random" in body:
                delay = body.get("delay")
                self.set_random_faults(
                    {str(k): float(v) for k, v in dict(body["random"]).items()},
                    seed=None if body.get("seed") is None else int(body["seed"]),
                    delay=None if delay is None else float(delay),
                )
            if "reject_external_ids" in body:
                self.reject_external_ids = [str(x) for x in body["reject_external_ids"]]
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json(400, {"message": str(exc)})
        return _json(200, self.state(objects=False))

    async def _handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(200, {"message": "reset"})


def _creates_user(obj: Mapping[str, Any], id_kind: str) -> bool:
    if id_kind == "external_id":
        return True
    if id_kind == "braze_id":
        return False
    return obj.get("_update_existing_only") is False


def _limit_headers(window: _Window, remaining: int, reset: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(window.limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _drop(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Nothing reaches the client: the connection is gone; aiohttp drops this response quietly.
    return web.Response(status=500)


# --- the process --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cdi_operator.braze.emulator", description="Serve the Braze REST API emulator on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--api-key", default="emulator-key")
    parser.add_argument(
        "--record", action=argparse.BooleanOptionalAction, default=True, help="keep the objects (default: yes)"
    )
    parser.add_argument("--track-limit", type=int, default=75, help="objects per /users/track request (default 75)")
    parser.add_argument("--limit-mode", choices=("total", "perArray"), default="total")
    parser.add_argument("--track-rate-limit", type=int, default=3000)
    parser.add_argument("--track-rate-window", type=float, default=3.0)
    parser.add_argument("--delete-rate-limit", type=int, default=20_000)
    parser.add_argument("--delete-rate-window", type=float, default=60.0)
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After with 429s")
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every response takes (default 0)")
    parser.add_argument("--seed", type=int, default=None)
    return parser


def from_args(args: argparse.Namespace) -> BrazeEmulator:
    return BrazeEmulator(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        record=args.record,
        track_limit=args.track_limit,
        limit_mode=args.limit_mode,
        track_rate_limit=args.track_rate_limit,
        track_rate_window=args.track_rate_window,
        delete_rate_limit=args.delete_rate_limit,
        delete_rate_window=args.delete_rate_window,
        retry_after=args.retry_after,
        slow_delay=args.slow_delay,
        latency=args.latency,
        seed=args.seed,
    )


async def _serve(emulator: BrazeEmulator) -> None:
    url = await emulator.start_async()
    print(f"Braze emulator listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emulator.stop_async()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(from_args(args)))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
