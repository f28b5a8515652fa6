"""The asyncio client for Braze's `/users/track`, `/users/delete` and catalog item REST endpoints.

One `BrazeClient` owns one aiohttp session. Many tasks call `track()` / `delete()` concurrently; the client bounds
the requests in flight to what carries its rate at the measured latency (Little's law, at most `max_in_flight`),
paces each endpoint family on the workspace's budget shared with every other run (`budget.py`: Braze's
`X-RateLimit-*` headers, minus a reserve) and within this run's own cap (`requests_per_second`, a token bucket),
retries what is worth retrying and raises `BrazeError` for what needs a human.

Decisions where BRAZE-API.md is silent:

- Requests in flight: rate times latency, the rate being the most this client may send (`requests_per_second`, or the
  endpoint family's `limit - reserve` per window when lower) and the latency a moving average of the last
  responses, with a quarter more for its variation, plus one; never more than `max_in_flight` (default 256: 1,000
  requests/s at up to 200 ms a response), and until the first response `FIRST_IN_FLIGHT`, what a run sends before
  it knows the latency. Fewer would leave budget unused; more only queues at Braze.

- Retried with exponential backoff and full jitter, up to `max_attempts` attempts: 5xx, 408, timeouts and
  connection failures (reset, dropped without a response, truncated body). A retry after a dropped connection may
  re-send a request Braze already applied ("delivered, ack lost"); delivery is at least once.
- 429: every request of the client pauses (one shared gate) until `Retry-After` (seconds or an HTTP date) or else
  `X-RateLimit-Reset` (epoch seconds). When the server's `Date` is more than 2 s away from our clock, the wait is
  computed against the server's clock, so that a skewed local clock neither hammers Braze nor waits for minutes.
  Without either header the wait backs off exponentially. A single wait longer than `max_rate_limit_wait` is
  `RateLimitWaitExceeded`, and so is a request rate limited more than `RATE_LIMITED_ATTEMPTS` times; 429s do not
  count against `max_attempts`. A response with `X-RateLimit-Remaining: 0` closes the gate until its reset too.
- Not retried: 400 (`BadRequest`, e.g. "Max Input Length Exceeded"), 401 (`Unauthorized`), 403 (`Forbidden`),
  404 (`NotFound`); any other 4xx, a 3xx or a 1xx is `UnexpectedResponse`. Any other 2xx counts as delivered.
- `SendResult.errors`: Braze's 201 `errors` list, keyed by the index of the object the item names when it names
  the array that was sent and an index inside the request; every other item (no index, another array, an index out
  of range, not an object) goes under key -1 as text. Several items for one key are joined with "; ".
- Catalogs (`catalog_put()`, `catalog_delete()`: `PUT` / `DELETE /catalogs/{name}/items`, at most 50 items) are paced
  on the budget of the asynchronous item endpoints (16,000 a minute by default). A 400 whose errors are about items
  (`invalid-ids`, `invalid-fields`, ...) splits the request in halves, again and again, until each offending item is
  alone: the good items are delivered, and each offending item comes back in `SendResult.errors` as `"<Braze's error
  id>: <message>"`. `catalog-not-found` (a 404, or in a 400's errors) and "the catalog tier is out of space" (an error
  id in `catalog_out_of_space_errors`, or a message saying "out of space"; Braze does not document its id) are
  `BrazeError`s `CatalogNotFound` / `CatalogOutOfSpace`: nothing more can be delivered to that catalog. `catalogs()`
  lists the catalogs with their fields (`GET /catalogs`, following the `Link` header's `rel="next"`).
- The API key is only ever put in the Authorization header. Braze's messages quoted in errors are cut at 300
  characters and have any occurrence of the key replaced by `***`.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import functools
import math
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp
import orjson

from cdi_operator.braze.budget import BudgetExhausted, SharedBudget, WorkspaceBudget

__all__ = [
    "CATALOG_ITEM_LIMIT",
    "DELETE_LIMIT",
    "RATE_LIMITED_ATTEMPTS",
    "BrazeClient",
    "BrazeError",
    "BrazeSettings",
    "DeleteIdType",
    "SendResult",
    "TrackArray",
]

TrackArray = Literal["attributes", "events", "purchases"]
DeleteIdType = Literal["external_ids", "user_aliases", "braze_ids"]

TRACK_PATH = "/users/track"
DELETE_PATH = "/users/delete"
CATALOGS_PATH = "/catalogs"
DELETE_LIMIT = 50
CATALOG_ITEM_LIMIT = 50
CATALOG_NOT_FOUND = "catalog-not-found"
CATALOG_OUT_OF_SPACE = "catalog-out-of-space"  # our name: Braze's pages do not give this error's id
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
RATE_LIMITED_ATTEMPTS = 100  # 429s tolerated for one request before giving up (about 5 minutes of 3 s windows)
_CLOCK_SKEW_TOLERANCE = 2.0
_QUOTED_MESSAGE_LIMIT = 300

_TRACK_ARRAYS = frozenset(("attributes", "events", "purchases"))
_DELETE_ID_TYPES = frozenset(("external_ids", "user_aliases", "braze_ids"))
_RETRYABLE_EXCEPTIONS = (aiohttp.ClientError, TimeoutError, ConnectionError)
_LATENCY_WEIGHT = 0.125  # of the newest response time in the moving average (TCP's smoothed round trip)
_LATENCY_SLACK = 1.25  # the latency varies: room for the slower responses in the average
FIRST_IN_FLIGHT = 64  # requests in flight until the first response measures the latency


@dataclass(frozen=True)
class BrazeSettings:
    rest_endpoint: str
    api_key: str = field(repr=False)
    max_objects_per_request: int = 75
    max_in_flight: int = 256
    requests_per_second: float = 1000.0
    request_timeout: float = 30.0
    max_attempts: int = 8
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_rate_limit_wait: float = 300.0
    budget: WorkspaceBudget = field(default_factory=WorkspaceBudget)
    catalog_out_of_space_errors: frozenset[str] = frozenset({CATALOG_OUT_OF_SPACE})

    def __post_init__(self) -> None:
        if not self.rest_endpoint.startswith(("http://", "https://")):
            raise ValueError("rest_endpoint must be an http:// or https:// URL, e.g. https://rest.iad-01.braze.com")
        positive = {
            "max_objects_per_request": self.max_objects_per_request,
            "max_in_flight": self.max_in_flight,
            "requests_per_second": self.requests_per_second,
            "request_timeout": self.request_timeout,
            "max_attempts": self.max_attempts,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.max_rate_limit_wait < 0:
            raise ValueError("backoff_initial, backoff_max and max_rate_limit_wait must not be negative")


@dataclass
class SendResult:
    status: int
    queued: bool
    errors: dict[int, str]
    attempts: int


class BrazeError(Exception):
    """A failure of the sync as a whole: the request was not delivered and retrying will not help."""

    def __init__(
        self, reason: str, message: str, status: int | None = None, errors: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message
        self.errors = list(errors)  # a catalog 400's `errors` items ({"id", "message", ...})


_FIXES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Braze refused the request as malformed; check max_objects_per_request against your contract"),
    401: (
        "Unauthorized",
        "check the REST API key in the Secret (apiKeySecretRef) and that it belongs to this workspace and endpoint",
    ),
    403: (
        "Forbidden",
        "give the REST API key the users.track and users.delete permissions, and check its IP allowlist",
    ),
    404: (
        "NotFound",
        "check restEndpoint: it must be your instance's REST endpoint, e.g. https://rest.iad-01.braze.com",
    ),
}


class _TokenBucket:
    """Generic cell rate algorithm: a reservation per caller, so waiters are served in arrival order without a lock."""

    def __init__(self, rate: float, burst: float) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1.0) * self._interval
        self._tat = 0.0

    async def acquire(self) -> None:
        now = time.monotonic()
        tat = self._tat if self._tat > now else now
        self._tat = tat + self._interval
        delay = tat - self._tolerance - now
        if delay > 0:
            await asyncio.sleep(delay)


class ResizableSemaphore:
    """A semaphore whose size can change while tasks hold it or wait for it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    async def acquire(self) -> None:
        while self._held >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the turn on
                raise
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        room = self.limit - self._held
        while room > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1


class BrazeClient:
    def __init__(
        self,
        settings: BrazeSettings,
        *,
        on_response: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_response = on_response
        self._base = settings.rest_endpoint.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._session: aiohttp.ClientSession | None = None
        first = min(settings.max_in_flight, FIRST_IN_FLIGHT)
        self._window = ResizableSemaphore(first)
        self._latency: float | None = None  # moving average of the response time, seconds
        burst = max(1.0, min(float(first), settings.requests_per_second))
        self._bucket = _TokenBucket(settings.requests_per_second, burst)
        budget = settings.budget
        self._budgets = {
            family: SharedBudget(limit, budget.reserve, budget.share_without_headers)
            for family, limit in (("track", budget.track), ("delete", budget.delete), ("catalog", budget.catalog))
        }
        # One request at a time waits for its family's budget, the others in line behind it: each waiter polls the
        # budget, and a window of many waiting together would wake a thousand times a second for one start.
        self._budget_lines = {budget: asyncio.Lock() for budget in self._budgets.values()}
        self._paused_until = 0.0  # time.monotonic() before which no request starts (429 / remaining 0)
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"BrazeClient(rest_endpoint={self.settings.rest_endpoint!r})"

    async def __aenter__(self) -> BrazeClient:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            limit = self.settings.max_in_flight
            connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout),
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "cdi-operator"},
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def track(self, array: TrackArray, objects: Sequence[Mapping[str, Any] | bytes]) -> SendResult:
        """Send `objects` as the `array` of one `/users/track` request (at most max_objects_per_request); an
        object given as bytes is its JSON, sent as it is."""
        self._check_track(array, len(objects))
        fragment = orjson.Fragment
        items = [fragment(o) if type(o) is bytes else o for o in objects]
        body = orjson.dumps({array: items}, default=_plain)
        return await self._send("POST", TRACK_PATH, body, array, len(objects))

    async def track_encoded(self, array: TrackArray, objects: bytes, count: int) -> SendResult:
        """Send `count` objects, given as their JSON (encode_object) joined by commas, as the `array` of one
        `/users/track` request."""
        self._check_track(array, count)
        body = b'{"' + array.encode() + b'":[' + objects + b"]}"
        return await self._send("POST", TRACK_PATH, body, array, count)

    def _check_track(self, array: str, count: int) -> None:
        if array not in _TRACK_ARRAYS:
            raise ValueError(f"array must be one of attributes, events, purchases, got {array!r}")
        if not count:
            raise ValueError("an empty batch: send at least one object")
        if count > self.settings.max_objects_per_request:
            raise ValueError(f"{count} objects exceed max_objects_per_request={self.settings.max_objects_per_request}")

    async def delete(self, id_type: DeleteIdType, identifiers: Sequence[Any]) -> SendResult:
        """Delete the users named by `identifiers` (at most 50, all of `id_type`) with one `/users/delete` request."""
        if id_type not in _DELETE_ID_TYPES:
            raise ValueError(f"id_type must be one of external_ids, user_aliases, braze_ids, got {id_type!r}")
        if not identifiers:
            raise ValueError("an empty batch: send at least one identifier")
        if len(identifiers) > DELETE_LIMIT:
            raise ValueError(f"{len(identifiers)} identifiers exceed the /users/delete limit of {DELETE_LIMIT}")
        body = orjson.dumps({id_type: identifiers}, default=_plain)
        return await self._send("POST", DELETE_PATH, body, id_type, len(identifiers))

    async def catalog_put(self, catalog: str, items: Sequence[Mapping[str, Any]]) -> SendResult:
        """Create or replace `items` (each with its "id", at most 50) in `catalog`; see the module docstring for
        how a 400 is split."""
        return await self._catalog_items("PUT", catalog, items)

    async def catalog_delete(self, catalog: str, ids: Sequence[str]) -> SendResult:
        """Delete the items with `ids` (at most 50) from `catalog`."""
        return await self._catalog_items("DELETE", catalog, [{"id": item_id} for item_id in ids])

    async def catalogs(self) -> dict[str, dict[str, str]]:
        """The workspace's catalogs: name -> {field name: field type} (`GET /catalogs`, every page)."""
        found: dict[str, dict[str, str]] = {}
        url: str | None = self._base + CATALOGS_PATH
        while url is not None:
            status, headers, payload, _ = await self._request("GET", CATALOGS_PATH, url, None, None)
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                parsed = None
            listed = parsed.get("catalogs") if isinstance(parsed, dict) else None
            if not isinstance(listed, list):
                raise BrazeError(
                    "UnexpectedResponse",
                    f"GET {CATALOGS_PATH} got HTTP {status} without a 'catalogs' list; check restEndpoint",
                    status,
                )
            for catalog in listed:
                if isinstance(catalog, dict) and isinstance(catalog.get("name"), str):
                    fields = catalog.get("fields")
                    if not isinstance(fields, list):
                        fields = []
                    found[catalog["name"]] = {
                        str(f["name"]): str(f.get("type", "")) for f in fields if isinstance(f, dict) and "name" in f
                    }
            match = _LINK_NEXT.search(headers.get("Link", ""))
            url = urllib.parse.urljoin(self._base + "/", match.group(1)) if match else None
        return found

    # --- catalogs: split a refused request until its offending items are alone ------------------------------------

    async def _catalog_items(self, method: str, catalog: str, items: Sequence[Mapping[str, Any]]) -> SendResult:
        if not items:
            raise ValueError("an empty batch: send at least one item")
        if len(items) > CATALOG_ITEM_LIMIT:
            raise ValueError(f"{len(items)} items exceed the catalog limit of {CATALOG_ITEM_LIMIT} per request")
        path = f"/catalogs/{urllib.parse.quote(catalog, safe='')}/items"
        body = orjson.dumps({"items": items}, default=_plain)
        try:
            return await self._send(method, path, body, "items", len(items), catalog=True)
        except BrazeError as exc:
            if exc.status != 400 or exc.reason != "BadRequest" or not exc.errors:
                raise
            if len(items) == 1:
                text = "; ".join(f"{e.get('id')}: {e.get('message') or ''}".rstrip(": ") for e in exc.errors)
                return SendResult(status=400, queued=False, errors={0: text}, attempts=1)
        half = len(items) // 2
        first, second = await asyncio.gather(
            self._catalog_items(method, catalog, items[:half]), self._catalog_items(method, catalog, items[half:])
        )
        errors = dict(first.errors)
        errors.update({(i + half if i >= 0 else i): text for i, text in second.errors.items()})
        status = 202 if not errors else 400
        return SendResult(status=status, queued=False, errors=errors, attempts=first.attempts + second.attempts)

    # --- one request, with its retries ---------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, body: bytes, array: str, count: int, *, catalog: bool = False
    ) -> SendResult:
        family = self._budgets["catalog" if catalog else "track" if path == TRACK_PATH else "delete"]
        endpoint = f"{method} /catalogs/items" if catalog else path
        status, _, payload, total = await self._request(method, endpoint, self._base + path, body, family, path)
        errors = {} if catalog else _map_errors(payload, array, count)
        return SendResult(status=status, queued=status == 202 and not catalog, errors=errors, attempts=total)

    async def _request(
        self,
        method: str,
        endpoint: str,
        url: str,
        body: bytes | None,
        budget: SharedBudget | None,
        path: str | None = None,
    ) -> tuple[int, Mapping[str, str], bytes, int]:
        """(status, headers, body, attempts) of a 2xx; retries what is worth it, raises BrazeError otherwise.
        `endpoint` labels the responses for on_response; `path` is what messages show."""
        if self._session is None:
            raise RuntimeError("BrazeClient is not open: use `async with BrazeClient(settings) as client:`")
        shown = f"{method} {path or endpoint}"
        attempts = 0  # attempts that count against max_attempts
        rate_limited = 0
        total = 0
        last_status: int | None = None
        while True:
            total += 1
            try:
                status, headers, payload = await self._attempt(method, url, body, budget)
            except BudgetExhausted as exc:
                raise BrazeError(
                    "RateLimitWaitExceeded",
                    f"{shown}: this workspace's rate budget is spent for the next {exc.wait:.0f} s, more than "
                    f"max_rate_limit_wait={self.settings.max_rate_limit_wait:g} s; lower requestsPerSecond or the "
                    "load other clients put on this workspace's REST API, or retry later",
                    429,
                ) from None
            except _RETRYABLE_EXCEPTIONS as exc:
                code = "timeout" if isinstance(exc, TimeoutError) else "connection_error"
                self._hook(endpoint, code)
                attempts += 1
                await self._back_off(shown, attempts, f"{code} ({type(exc).__name__})", last_status)
                continue
            self._hook(endpoint, str(status))
            if 200 <= status < 300:
                self._note_remaining(headers)
                return status, headers, payload, total
            if status == 429:
                rate_limited += 1
                await self._pause_for_rate_limit(shown, headers, rate_limited)
                continue
            if status >= 500 or status == 408:
                attempts += 1
                last_status = status
                await self._back_off(shown, attempts, f"HTTP {status} {self._quote(payload)}".rstrip(), status)
                continue
            raise self._fatal(shown, status, payload)

    async def _attempt(
        self, method: str, url: str, body: bytes | None, budget: SharedBudget | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request; `budget` None: not one of the paced endpoint families (GET /catalogs)."""
        assert self._session is not None
        async with self._window:
            while True:
                wait = self._paused_until - time.monotonic()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if budget is None:
                return await self._exchange(method, url, body)
            async with self._budget_lines[budget]:
                await budget.acquire(self.settings.max_rate_limit_wait)
            try:
                await self._bucket.acquire()
                sent = time.monotonic()
                status, headers, payload = await self._exchange(method, url, body)
                self._carry(budget, time.monotonic() - sent)
                budget.observe(headers, _server_now(headers))
                return status, headers, payload
            finally:
                budget.release()

    @property
    def in_flight_limit(self) -> int:
        """Requests that may be in flight at once now (see the module docstring)."""
        return self._window.limit

    def _carry(self, budget: SharedBudget, latency: float) -> None:
        """Resize the window to carry this client's rate at the latency measured (Little's law)."""
        average = latency if self._latency is None else self._latency + (latency - self._latency) * _LATENCY_WEIGHT
        self._latency = average
        rate = min(self.settings.requests_per_second, budget.rate)
        needed = math.ceil(rate * average * _LATENCY_SLACK) + 1
        self._window.resize(max(1, min(self.settings.max_in_flight, needed)))

    async def _exchange(self, method: str, url: str, body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        assert self._session is not None
        async with self._session.request(method, url, data=body, headers=self._headers, allow_redirects=False) as resp:
            payload = await resp.read()
            return resp.status, resp.headers, payload

    async def _back_off(self, shown: str, attempts: int, problem: str, status: int | None) -> None:
        settings = self.settings
        if attempts >= settings.max_attempts:
            raise BrazeError(
                "RetriesExhausted",
                f"{shown} failed {attempts} times in a row, the last with {problem}; check that restEndpoint "
                f"{settings.rest_endpoint} is reachable from the runner and Braze's status page",
                status,
            )
        ceiling = min(settings.backoff_max, settings.backoff_initial * (2 ** (attempts - 1)))
        await asyncio.sleep(self._random.uniform(0, ceiling))

    async def _pause_for_rate_limit(self, shown: str, headers: Mapping[str, str], rate_limited: int) -> None:
        settings = self.settings
        if rate_limited > RATE_LIMITED_ATTEMPTS:
            raise BrazeError(
                "RateLimitWaitExceeded",
                f"{shown} was rate limited (HTTP 429) {rate_limited} times in a row; lower requestsPerSecond or "
                "the load other clients put on this workspace's REST API",
                429,
            )
        wait = _rate_limit_wait(headers)
        if wait is None:
            ceiling = min(settings.backoff_max, max(settings.backoff_initial, 0.1) * (2 ** (rate_limited - 1)))
            wait = self._random.uniform(ceiling / 2, ceiling)
        if wait > settings.max_rate_limit_wait:
            raise BrazeError(
                "RateLimitWaitExceeded",
                f"{shown} was rate limited (HTTP 429) and Braze asked to wait {wait:.0f} s, more than "
                f"max_rate_limit_wait={settings.max_rate_limit_wait:g} s; lower requestsPerSecond or retry later",
                429,
            )
        self._pause(wait)
        await asyncio.sleep(max(0.0, self._paused_until - time.monotonic()))

    def _note_remaining(self, headers: Mapping[str, str]) -> None:
        remaining = headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.strip() == "0":
            wait = _reset_wait(headers)
            if wait is not None and 0 < wait <= self.settings.max_rate_limit_wait:
                self._pause(wait)

    def _pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self._paused_until:
            self._paused_until = until

    def _hook(self, path: str, code: str) -> None:
        if self.on_response is not None:
            self.on_response(path, code)

    def _quote(self, payload: bytes) -> str:
        """Braze's message from a response body: cut short, never holding the API key."""
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            text: str = parsed["message"]
            details = _catalog_errors(parsed)
            if details:
                text += " (" + "; ".join(f"{e.get('id')}: {e.get('message') or ''}" for e in details) + ")"
        else:
            text = payload.decode("utf-8", "replace").strip()
        if len(text) > _QUOTED_MESSAGE_LIMIT:
            text = text[:_QUOTED_MESSAGE_LIMIT] + "…"
        key = self.settings.api_key
        if key:
            text = text.replace(key, "***")
        return f'"{text}"' if text else ""

    def _fatal(self, shown: str, status: int, payload: bytes) -> BrazeError:
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        errors = _catalog_errors(parsed)
        ids = {str(e.get("id")) for e in errors}
        messages = " ".join(str(e.get("message") or "") for e in errors).lower()
        catalog = " /catalogs/" in shown
        if catalog and (CATALOG_NOT_FOUND in ids or status == 404):
            reason, fix = (
                "CatalogNotFound",
                "create the catalog in Braze (a sync never creates one) or fix spec.catalog.name",
            )
        elif catalog and (ids & self.settings.catalog_out_of_space_errors or "out of space" in messages):
            reason, fix = (
                "CatalogOutOfSpace",
                "the catalog tier is out of space: delete items or catalogs, or upgrade the catalog tier in Braze",
            )
        else:
            reason, fix = _FIXES.get(
                status,
                ("UnexpectedResponse", "check restEndpoint and any proxy between the runner and Braze"),
            )
        quoted = self._quote(payload)
        said = f": Braze said {quoted}" if quoted else ""
        return BrazeError(reason, f"{shown} got HTTP {status} {reason}{said}; {fix}", status, errors)


def _catalog_errors(parsed: Any) -> list[Mapping[str, Any]]:
    """The `errors` items of a catalog error body (`[{"id": "invalid-ids", "message": ...}]`)."""
    items = parsed.get("errors") if isinstance(parsed, dict) else None
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_object(obj: Mapping[str, Any]) -> bytes:
    """One object's JSON as `track()` would send it; `track()` takes these bytes in its place, sent as they are."""
    return orjson.dumps(obj, default=_plain)


def _map_errors(payload: bytes, array: str, count: int) -> dict[int, str]:
    if b'"errors"' not in payload:
        return {}
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    items = parsed.get("errors") if isinstance(parsed, dict) else None
    if not items or not isinstance(items, list):
        return {}
    errors: dict[int, str] = {}
    for item in items:
        index = -1
        if isinstance(item, dict):
            text = str(item.get("type") or item.get("message") or orjson.dumps(item).decode())
            at = item.get("index")
            if item.get("input_array", array) == array and type(at) is int and 0 <= at < count:
                index = at
            elif "input_array" in item or at is not None:
                text = f"{item.get('input_array', '?')}[{at}]: {text}"
        else:
            text = str(item)
        errors[index] = f"{errors[index]}; {text}" if index in errors else text
    return errors


def _rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait after a 429: Retry-After wins over X-RateLimit-Reset; None when neither is usable."""
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        value = retry_after.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - _server_now(headers))
    return _reset_wait(headers)


def _reset_wait(headers: Mapping[str, str]) -> float | None:
    reset = headers.get("X-RateLimit-Reset")
    if reset is None:
        return None
    try:
        at = float(reset.strip())
    except ValueError:
        return None
    return max(0.0, at - _server_now(headers))


@functools.lru_cache(maxsize=4)  # a Date changes once a second, and a busy run reads it a thousand times a second
def _date_seconds(date: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def _server_now(headers: Mapping[str, str]) -> float:
    """Our clock, unless the response's Date shows it is off by more than a couple of seconds."""
    now = time.time()
    date = headers.get("Date")
    if date is None:
        return now
    server = _date_seconds(date)
    if server is None:
        return now
    # Date has a resolution of one second: the server's clock is somewhere in [server, server + 1).
    if abs(now - (server + 0.5)) > _CLOCK_SKEW_TOLERANCE:
        return server + 0.5
    return now
