"""The emulator's HTTP server: `/users/track`, `/users/delete`, catalogs, the rate limits, the faults, the admin API."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, Literal

import orjson
from aiohttp import web

from cdi_operator.braze.emulator.faults import Fault, Faults
from cdi_operator.braze.emulator.rules import (
    CATALOG_FIELD_TYPES,
    DELETE_ID_TYPES,
    DELETE_LIMIT,
    TRACK_ARRAYS,
    attributes_error,
    catalog_error,
    catalog_items_errors,
    delete_item_error,
    event_error,
    identify,
    purchase_error,
)
from cdi_operator.braze.emulator.state import Catalog, Records, RequestRecord

STATE_OBJECT_LIMIT = 10_000  # GET /_emulator/state leaves the objects out above this many

LimitMode = Literal["total", "perArray"]

_STATUS_MESSAGES = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


WINDOW_HISTORY = 1000  # closed windows each limiter remembers (GET /_emulator/state "rate_windows")

# The endpoint families, each with a limiter of its own per API key: (limit, window) come from the constructor.
FAMILIES = ("track", "delete", "catalog", "catalog_list")


class Window:
    """A fixed-window request counter, as Braze's per-workspace limits are."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._start = -1.0
        self._count = 0
        self.history: deque[tuple[float, int]] = deque(maxlen=WINDOW_HISTORY)

    def hit(self, now: float) -> tuple[bool, int, int]:
        """Count one request: (allowed, remaining, reset epoch second)."""
        start = math.floor(now / self.seconds) * self.seconds
        if start != self._start:
            if self._count:
                self.history.append((self._start, self._count))
            self._start, self._count = start, 0
        self._count += 1
        return self._count <= self.limit, max(0, self.limit - self._count), math.ceil(start + self.seconds)

    def peek(self, now: float) -> tuple[int, int]:
        start = math.floor(now / self.seconds) * self.seconds
        used = self._count if start == self._start else 0
        return max(0, self.limit - used), math.ceil(start + self.seconds)

    def counts(self) -> list[tuple[float, int]]:
        """(window start in epoch seconds, requests counted) of the remembered windows, oldest first."""
        current = [(self._start, self._count)] if self._count else []
        return [*self.history, *current]


class BrazeEmulator:
    def __init__(
        self,
        api_key: str = "emulator-key",
        *,
        other_api_keys: Iterable[str] = (),
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
        catalog_rate_limit: int = 16_000,
        catalog_rate_window: float = 60.0,
        catalog_list_rate_limit: int = 5,
        catalog_list_rate_window: float = 60.0,
        out_of_space_error_id: str = "catalog-out-of-space",
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
        self._keys = {f"Bearer {key}": key for key in (api_key, *other_api_keys)}
        self._lock = threading.Lock()
        self._family_limits = {
            "track": (track_rate_limit, track_rate_window),
            "delete": (delete_rate_limit, delete_rate_window),
            "catalog": (catalog_rate_limit, catalog_rate_window),
            "catalog_list": (catalog_list_rate_limit, catalog_list_rate_window),
        }
        # One limiter per API key and endpoint family, across all connections, as Braze keeps them per workspace.
        self._windows = {key: {f: Window(*self._family_limits[f]) for f in FAMILIES} for key in self._keys.values()}
        self.out_of_space_error_id = out_of_space_error_id
        self._catalog_storage_limit: int | None = None
        self._faults = Faults(seed)
        self._reject_external_ids: frozenset[str] = frozenset()
        self._request_log_size = request_log_size
        self._records = Records(request_log_size)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __repr__(self) -> str:
        return f"BrazeEmulator(url={self.url!r})"

    # --- thread-safe accessors ------------------------------------------------------------------------------------

    def tracked(self, array: str) -> list[dict[str, Any]]:
        """The accepted objects of `array` ("attributes", "events", "purchases") in arrival order."""
        with self._lock:
            return list(self._records.tracked[array])

    def deleted(self) -> list[Any]:
        """Every deleted identifier (strings, alias objects) in arrival order."""
        with self._lock:
            return list(self._records.deleted)

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """A copy of the merged attribute profiles (see the package docstring for the keys)."""
        with self._lock:
            return {key: dict(profile) for key, profile in self._records.profiles.items()}

    @property
    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._records.status_counts)

    @property
    def counts(self) -> dict[str, int]:
        """Accepted objects per array, "deleted" identifiers, and "requests"; kept even with record=False."""
        with self._lock:
            return dict(self._records.counts)

    @property
    def peak_in_flight(self) -> int:
        """The most `/users/*` requests the server was handling at once."""
        with self._lock:
            return self._records.peak_in_flight

    def requests(self) -> list[RequestRecord]:
        """The last `request_log_size` `/users/*` requests, in the order their responses were decided."""
        with self._lock:
            return list(self._records.requests)

    def window_counts(self, family: str = "track", api_key: str | None = None) -> list[tuple[float, int]]:
        """(window start, requests counted) of the last windows of one endpoint family ("track", "delete" with
        alias/identify/merge, "catalog", "catalog_list") for `api_key` (default: the first key), oldest first."""
        with self._lock:
            return self._windows[api_key or self.api_key][family].counts()

    @property
    def reject_external_ids(self) -> frozenset[str]:
        return self._reject_external_ids

    @reject_external_ids.setter
    def reject_external_ids(self, ids: Iterable[str]) -> None:
        self._reject_external_ids = frozenset(ids)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Attribute objects with `_update_existing_only: true` for users the emulator does not know: received,
        applied to no profile."""
        with self._lock:
            return list(self._records.skipped)

    def create_catalog(self, name: str, fields: Mapping[str, str], items: Iterable[Mapping[str, Any]] = ()) -> None:
        """Create (or redefine, keeping its items) a catalog with `fields` {name: type}, holding `items` too; types
        are Braze's: string, number, boolean, time, array, object. The `id` field is implicit."""
        unknown = set(fields.values()) - CATALOG_FIELD_TYPES
        if unknown:
            raise ValueError(f"unknown field types {sorted(unknown)}; one of {', '.join(sorted(CATALOG_FIELD_TYPES))}")
        with self._lock:
            catalog = self._records.catalogs.get(name)
            if catalog is None:
                catalog = self._records.catalogs[name] = Catalog(dict(fields))
            else:
                catalog.fields = dict(fields)
            catalog.items.update({str(item["id"]): dict(item) for item in items})

    def delete_catalog(self, name: str) -> None:
        with self._lock:
            self._records.catalogs.pop(name, None)

    def catalog_items(self, name: str) -> dict[str, dict[str, Any]]:
        """The items `name` holds now, by id (KeyError when there is no such catalog)."""
        with self._lock:
            return {item_id: dict(item) for item_id, item in self._records.catalogs[name].items.items()}

    @property
    def catalog_storage_limit(self) -> int | None:
        """Items all catalogs may hold together; a PUT that would go beyond is "out of space". None: no limit."""
        return self._catalog_storage_limit

    @catalog_storage_limit.setter
    def catalog_storage_limit(self, limit: int | None) -> None:
        self._catalog_storage_limit = limit

    def add_profile(self, key: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Create a profile (e.g. `braze_id:<id>`, which Braze never creates from /users/track)."""
        with self._lock:
            self._records.profiles.setdefault(key, {}).update(attributes or {})

    def inject(self, kind: str, times: int = 1, *, delay: float | None = None) -> None:
        """Queue `times` faults of `kind` for the next `/users/*` requests."""
        Faults.check_kind(kind)
        fault = Fault(kind, self.slow_delay if delay is None else delay)
        with self._lock:
            self._faults.queued.extend([fault] * times)

    def set_random_faults(
        self, probabilities: Mapping[str, float], seed: int | None = None, *, delay: float | None = None
    ) -> None:
        """Give each request a fault of each kind with the given probability (their sum at most 1)."""
        Faults.check_probabilities(probabilities)
        with self._lock:
            self._faults.set_random(probabilities, seed, delay)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget every object, profile, count and fault (the rate-limit windows are kept)."""
        with self._lock:
            self._faults.clear()
            self._reject_external_ids = frozenset()
            self._catalog_storage_limit = None
            in_flight = self._records.in_flight
            self._records = Records(self._request_log_size)
            self._records.in_flight = in_flight

    def state(self, objects: bool = True) -> dict[str, Any]:
        """A JSON-ready summary; the objects and profiles only when recorded and not more than STATE_OBJECT_LIMIT."""
        with self._lock:
            counts = dict(self._records.counts)
            state: dict[str, Any] = {
                "status_counts": {str(k): v for k, v in sorted(self._records.status_counts.items())},
                "counts": counts,
                "peak_in_flight": self._records.peak_in_flight,
                "first_request_at": self._records.first_request_at,
                "last_request_at": self._records.last_request_at,
                "pending_faults": [f.kind for f in self._faults.queued],
                "random_faults": dict(self._faults.probabilities),
                "record": self.record,
                "rate_windows": {
                    key: {family: window.counts() for family, window in windows.items()}
                    for key, windows in self._windows.items()
                },
            }
            total = sum(len(v) for v in self._records.tracked.values()) + len(self._records.deleted)
            if objects and self.record and total <= STATE_OBJECT_LIMIT:
                state["objects"] = {name: list(items) for name, items in self._records.tracked.items()}
                state["objects"]["deleted"] = list(self._records.deleted)
                state["profiles"] = {key: dict(p) for key, p in self._records.profiles.items()}
                state["skipped"] = list(self._records.skipped)
                state["catalogs"] = {
                    name: {"fields": dict(c.fields), "items": dict(c.items)}
                    for name, c in self._records.catalogs.items()
                }
            return state

    # --- serving --------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_post("/users/track", self._handle_track)
        app.router.add_post("/users/delete", self._handle_delete)
        for path, array in _SHARED_WITH_DELETE.items():
            app.router.add_post(path, partial(self._handle, family="delete", apply=partial(_apply_shared, array)))
        app.router.add_get("/catalogs", self._handle_catalogs)
        app.router.add_put("/catalogs/{name}/items", partial(self._handle_items, put=True))
        app.router.add_delete("/catalogs/{name}/items", partial(self._handle_items, put=False))
        app.router.add_get("/_emulator/state", self._handle_state)
        app.router.add_post("/_emulator/catalogs", self._handle_create_catalog)
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

    def _next_fault(self) -> Fault | None:
        with self._lock:
            records = self._records
            records.in_flight += 1
            records.peak_in_flight = max(records.peak_in_flight, records.in_flight)
            return self._faults.next(self.slow_delay)

    def _finish(self, path: str, status: int, objects: int, fault: Fault | None, at: float | None = None) -> None:
        # Called with the lock held.
        self._records.finish(path, status, objects, fault.kind if fault else None, at)

    async def _handle_track(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "track", self._apply_track)

    async def _handle_delete(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "delete", self._apply_delete)

    async def _handle_items(self, request: web.Request, *, put: bool) -> web.StreamResponse:
        return await self._handle(request, "catalog", partial(self._apply_items, request.match_info["name"], put))

    def _windows_of(self, request: web.Request) -> dict[str, Window] | None:
        """The limiters of the request's API key; None for a key the emulator does not know."""
        key = self._keys.get(request.headers.get("Authorization", ""))
        return None if key is None else self._windows[key]

    async def _handle(
        self,
        request: web.Request,
        family: str,
        apply: Callable[[Any], tuple[int, dict[str, Any], int]],
    ) -> web.StreamResponse:
        path = request.path
        fault = self._next_fault()
        kind = fault.kind if fault is not None else None
        arrived: float | None = None  # RequestRecord.at: when it was counted (None: it went away before that)
        try:
            body = await request.read()
            # Braze's limiter counts a request as it arrives, before the work and the way back that the latency
            # stands for: one sent just before a window's reset is in that window, and its answer tells so.
            with self._lock:
                arrived = time.time()
                limited = self._limit(request, family, kind, arrived)
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif self.latency:
                await asyncio.sleep(self.latency)
        except Exception:  # the client went away mid-body or while its answer waited
            with self._lock:
                self._finish(path, 0, 0, fault, arrived)
            return _drop(request)
        except BaseException:
            with self._lock:
                self._finish(path, 0, 0, fault, arrived)
            raise
        with self._lock:
            if kind is not None and kind.startswith("http5"):
                status = int(kind[4:])
                self._finish(path, status, 0, fault, arrived)
                return _json(status, {"message": _STATUS_MESSAGES[status]})
            if kind == "drop":
                self._finish(path, 0, 0, fault, arrived)
                return _drop(request)
            if isinstance(limited, web.Response):
                self._finish(path, limited.status, 0, fault, arrived)
                return limited
            headers = limited
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._finish(path, 400, 0, fault, arrived)
                return _json(400, {"message": "Invalid JSON in request body"}, headers)
            status, response, accepted = apply(parsed)
            if status == 201 and kind == "queued":
                status, response = 202, {"message": "queued"}
            if kind == "drop_after":
                self._finish(path, 0, accepted, fault, arrived)
                return _drop(request)
            self._finish(path, status, accepted, fault, arrived)
            return _json(status, response, headers)

    def _limit(self, request: web.Request, family: str, kind: str | None, now: float) -> web.Response | dict[str, str]:
        """Count a request that arrived at `now` in its API key's limiter: its rate-limit headers, or the answer
        that refuses it (401, 429). Called with the lock held."""
        if kind is not None and (kind.startswith("http5") or kind == "drop"):
            return {}  # a request that fails before the limiter counts it
        windows = self._windows_of(request)
        if kind == "http429":
            window = (windows or self._windows[self.api_key])[family]
            _, reset = window.peek(now)
            return self._rate_limited(window, reset, now)
        if windows is None:  # no workspace, so no limiter to count it in
            message = "Invalid API key" if "Authorization" in request.headers else "Missing API key"
            return _json(401, {"message": message})
        window = windows[family]
        allowed, remaining, reset = window.hit(now)
        if not allowed:
            return self._rate_limited(window, reset, now)
        return _limit_headers(window, remaining, reset)

    def _rate_limited(self, window: Window, reset: int, now: float) -> web.Response:
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
        track = self._track_object
        keep = self.record
        counts = self._records.counts
        for name, items in arrays:  # already in Braze's order: attributes, events, purchases
            accepted = 0
            for index, obj in enumerate(items):
                error = track(name, obj, reject, keep)
                if error is None:
                    accepted += 1
                else:
                    errors.append({"type": error, "input_array": name, "index": index})
            processed[name] = accepted
            if accepted and not keep:  # Records.track counts the objects it keeps
                counts[name] += accepted
        response: dict[str, Any] = {"message": "success"}
        for name in TRACK_ARRAYS:
            if processed[name] or name in body:
                response[f"{name}_processed"] = processed[name]
        if errors:
            response["errors"] = errors
        return 201, response, sum(processed.values())

    def _track_object(self, array: str, obj: Any, reject: frozenset[str], keep: bool) -> str | None:
        if not isinstance(obj, dict):
            return "Each object must be a JSON object"
        key, id_kind = identify(obj)
        if not key:
            return id_kind
        if reject and id_kind == "external_id" and obj["external_id"] in reject:
            return "Rejected by the emulator (reject_external_ids)"
        if array == "attributes":
            error = attributes_error(obj, id_kind)
        elif array == "events":
            error = event_error(obj)
        else:
            error = purchase_error(obj)
        if error is not None:
            return error
        if keep:  # otherwise _apply_track counts the accepted objects, once per array
            self._records.track(array, obj, key, id_kind, keep=True)
        return None

    def _apply_items(self, name: str, put: bool, body: Any) -> tuple[int, dict[str, Any], int]:
        # Called with the lock held. Braze refuses the whole request when one item is wrong.
        catalog = self._records.catalogs.get(name)
        if catalog is None:
            return (
                404,
                _invalid([catalog_error("catalog-not-found", "Could not find catalog", "catalog_name", name)]),
                0,
            )
        errors = catalog_items_errors(body, catalog.fields, with_fields=put)
        if errors:
            return 400, _invalid(errors), 0
        items: list[dict[str, Any]] = body["items"]
        if put:
            limit = self._catalog_storage_limit
            new = {item["id"] for item in items} - set(catalog.items)
            if limit is not None and sum(len(c.items) for c in self._records.catalogs.values()) + len(new) > limit:
                error = catalog_error(self.out_of_space_error_id, "The catalog tier is out of space")
                return 400, _invalid([error]), 0
            for item in items:
                catalog.items[item["id"]] = dict(item)
        else:
            for item in items:
                catalog.items.pop(item["id"], None)
        return 202, {"message": "success"}, len(items)

    async def _handle_catalogs(self, request: web.Request) -> web.Response:
        with self._lock:
            now = time.time()
            windows = self._windows_of(request)
            if windows is None:
                return _json(401, {"message": "Invalid API key"})
            window = windows["catalog_list"]
            allowed, remaining, reset = window.hit(now)
            if not allowed:
                return self._rate_limited(window, reset, now)
            listing = [c.listing(name) for name, c in self._records.catalogs.items()]
        return _json(200, {"catalogs": listing, "message": "success"}, _limit_headers(window, remaining, reset))

    async def _handle_create_catalog(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if "fields" in body or body.get("delete"):
                if not isinstance(body.get("name"), str):
                    raise ValueError("'name' (a string) is required with 'fields' or 'delete'")
                if body.get("delete"):
                    self.delete_catalog(body["name"])
                else:
                    fields = {str(k): str(v) for k, v in dict(body["fields"] or {}).items()}
                    self.create_catalog(body["name"], fields, list(body.get("items") or []))
            if "storage_limit" in body:
                limit = body["storage_limit"]
                self.catalog_storage_limit = None if limit is None else int(limit)
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            return _json(400, {"message": str(exc)})
        return _json(200, {"message": "success"})

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
            error = delete_item_error(id_type, item)
            if error:
                return 400, {"message": error}, 0
        self._records.delete(id_type, items, keep=self.record)
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


# Endpoints that share /users/delete's limit (BRAZE-API.md), with the array each needs: the emulator counts them in
# that limit and answers 201, applying nothing (no test needs their effect, only their share of the budget).
_SHARED_WITH_DELETE = {
    "/users/alias/new": "user_aliases",
    "/users/identify": "aliases_to_identify",
    "/users/merge": "merge_updates",
}


def _apply_shared(array: str, body: Any) -> tuple[int, dict[str, Any], int]:
    items = body.get(array) if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return 400, {"message": f"'{array}' must be a non-empty array"}, 0
    if len(items) > DELETE_LIMIT:
        return 400, {"message": "Max Input Length Exceeded"}, 0
    return 201, {"message": "success"}, 0


def _invalid(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"errors": errors, "message": "Invalid Request"}


def _limit_headers(window: Window, remaining: int, reset: int) -> dict[str, str]:
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
