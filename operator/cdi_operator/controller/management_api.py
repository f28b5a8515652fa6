"""Braze's CDI management API, served by the operator on a port of its own (`$CDI_MANAGEMENT_API_PORT`), so that
automation written for Braze (Airflow, Dagster, scripts) triggers and watches syncs here unchanged.

The three endpoints of BRAZE-API.md with their shapes, codes and paging (management_views.py). Kubernetes decides
who may do what: the bearer token is a Kubernetes token, checked with a TokenReview, and each integration is shown
only to a caller that a SubjectAccessReview allows to `get` it (and synced only for one allowed to `patch` it), so
an integration of a namespace the caller cannot read is "not found". A sync sets the `cdi.ingest.dev/sync-now`
annotation to a fresh value, so the operator's one sync-now path starts the run; the schedule is not touched.
Rate limits are Braze's, per caller (the authenticated user). A token never reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cdi_operator.api.json import JSON
from cdi_operator.api.models import CDI_PLURAL, SYNC_NOW_ANNOTATION, WHC_PLURAL, Phase, run_lease_name
from cdi_operator.controller import management_views as views
from cdi_operator.controller.integration import selector
from cdi_operator.controller.settings import WEBHOOK_CERT_FILE, WEBHOOK_KEY_FILE, ManagementApiSettings
from cdi_operator.controller.sync_now import requested_value, sync_running
from cdi_operator.kube import Conflict, KubeError
from cdi_operator.kube.aio import Caller, KubeApi
from cdi_operator.kube.leases import available
from cdi_operator.runner.claim import describe

log = logging.getLogger(__name__)

LIST, SYNC, STATUS = "list", "sync", "status"
RATE_LIMITS = {LIST: 50, SYNC: 20, STATUS: 100}  # requests per minute and caller, as Braze allows per key
RATE_WINDOW = 60.0
SYNC_ATTEMPTS = 3  # a sync re-reads the integration after a conflicting write, this often
CERT_RELOAD_SECONDS = 60.0


class ApiError(Exception):
    """An answer other than success, in Braze's shape: `{"message": …}` with the HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bearer_token(header: str | None) -> str:
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "Missing or malformed Authorization header: send 'Authorization: Bearer <token>' with a Kubernetes "
            "token, e.g. from 'kubectl create token <serviceaccount>'",
        )
    return token.strip()


@dataclass
class RateLimiter:
    """Fixed one-minute windows per (endpoint, caller), as Braze counts; `check` raises the 429."""

    clock: Callable[[], float] = time.time
    windows: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def check(self, endpoint: str, caller: str) -> dict[str, str]:
        limit = RATE_LIMITS[endpoint]
        now = self.clock()
        start, count = self.windows.get((endpoint, caller), (now, 0))
        if now - start >= RATE_WINDOW:
            start, count = now, 0
        if len(self.windows) > 10_000:  # forget callers whose windows ended
            self.windows = {k: v for k, v in self.windows.items() if now - v[0] < RATE_WINDOW}
        reset = str(int(start + RATE_WINDOW))
        if count >= limit:
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset,
                "Retry-After": str(max(1, int(start + RATE_WINDOW - now))),
            }
            raise ApiError(429, f"Rate limit of {limit} requests per minute exceeded for this endpoint", headers)
        self.windows[(endpoint, caller)] = (start, count + 1)
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - count - 1),
            "X-RateLimit-Reset": reset,
        }


@dataclass(frozen=True)
class Answer:
    body: JSON
    status: int = 200
    link: str | None = None


class ManagementApi:
    """The endpoints as plain methods (a caller, the path's id, the cursor → an Answer, or an ApiError)."""

    def __init__(self, kube: KubeApi, namespaces: tuple[str, ...] = (), clock: Callable[[], datetime] | None = None):
        self.kube = kube
        self.namespaces = namespaces  # empty: every namespace
        self.clock = clock or (lambda: datetime.now(UTC))

    async def authenticate(self, header: str | None) -> Caller:
        token = bearer_token(header)
        caller = await self.kube.review_token(token)
        if caller is None:
            raise ApiError(401, "Invalid token: the Kubernetes API did not accept it (expired, revoked or unknown)")
        return caller

    async def _all(self, plural: str) -> list[JSON]:
        scopes: list[str | None] = list(self.namespaces) or [None]
        lists = await asyncio.gather(*(self.kube.list_objects(plural, scope) for scope in scopes))
        return [obj for objs in lists for obj in objs]

    async def _visible(self, caller: Caller, objs: list[JSON]) -> list[JSON]:
        """The integrations `caller` may get: a whole namespace with one review, else each by name."""
        by_namespace: dict[str, list[JSON]] = {}
        for obj in objs:
            by_namespace.setdefault(obj["metadata"]["namespace"], []).append(obj)

        async def allowed(namespace: str, items: list[JSON]) -> list[JSON]:
            if await self.kube.may(caller, "get", CDI_PLURAL, namespace):
                return items
            verdicts = await asyncio.gather(
                *(self.kube.may(caller, "get", CDI_PLURAL, namespace, o["metadata"]["name"]) for o in items)
            )
            return [o for o, ok in zip(items, verdicts, strict=True) if ok]

        chunks = await asyncio.gather(*(allowed(ns, items) for ns, items in by_namespace.items()))
        return [obj for chunk in chunks for obj in chunk]

    async def _find(self, caller: Caller, integration_id: str) -> JSON:
        if not views.valid_integration_id(integration_id):
            raise ApiError(400, "Invalid integration ID: give the CdiIntegration's metadata.uid")
        found = [o for o in await self._all(CDI_PLURAL) if (o.get("metadata") or {}).get("uid") == integration_id]
        if not found or not await self._visible(caller, found):
            raise ApiError(404, "Integration not found")
        return found[0]

    async def list_integrations(self, caller: Caller, cursor: str | None) -> Answer:
        objs, credentials = await asyncio.gather(self._all(CDI_PLURAL), self._all(WHC_PLURAL))
        visible = sorted(await self._visible(caller, objs), key=views.integration_key)
        result = _page(visible, views.integration_key, cursor, views.KIND_INTEGRATIONS, "", newest_first=False)
        types = {views.integration_key(c): (c.get("spec") or {}).get("type") for c in credentials}
        now = self.clock()
        results = []
        for obj in result.items:
            credential = ((obj.get("spec") or {}).get("credentialRef") or {}).get("name")
            warehouse_type = types.get((obj["metadata"]["namespace"], str(credential)))
            results.append(views.integration_result(obj, warehouse_type, now))
        return Answer({"results": results, "message": "success"}, link=views.link_header("/cdi/integrations", result))

    async def job_sync_status(self, caller: Caller, integration_id: str, cursor: str | None) -> Answer:
        obj = await self._find(caller, integration_id)
        runs = views.runs_newest_first(obj.get("status") or {})
        result = _page(runs, views.run_key, cursor, views.KIND_RUNS, integration_id, newest_first=True)
        path = f"/cdi/integrations/{integration_id}/job_sync_status"
        body = {"results": [views.job_result(r) for r in result.items], "message": "success"}
        return Answer(body, link=views.link_header(path, result))

    async def sync(self, caller: Caller, integration_id: str) -> Answer:
        obj = await self._find(caller, integration_id)
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if not await self.kube.may(caller, "patch", CDI_PLURAL, namespace, name):
            raise ApiError(403, f"Forbidden: {caller.username} may not patch CdiIntegration {namespace}/{name}")
        for _ in range(SYNC_ATTEMPTS):
            busy = await self._busy(obj)
            if busy:
                raise ApiError(429, f"Another job is in progress ({busy})")
            # Unique, and it names the caller: the SyncNow Event and the Job's annotation show who asked.
            value = f"{views.wire_time(self.clock())} {secrets.token_hex(3)} by {caller.username} (management API)"
            patch = {
                "metadata": {"resourceVersion": meta["resourceVersion"], "annotations": {SYNC_NOW_ANNOTATION: value}}
            }
            try:
                await self.kube.patch(CDI_PLURAL, namespace, name, patch)
            except Conflict:  # changed meanwhile (perhaps another sync request): judge it afresh
                fresh = await self.kube.get(CDI_PLURAL, namespace, name)
                if fresh is None or (fresh.get("metadata") or {}).get("uid") != integration_id:
                    raise ApiError(404, "Integration not found") from None
                obj, meta = fresh, fresh["metadata"]
                continue
            log.info(
                "sync requested through the management API",
                extra={"fields": {"integration": f"{namespace}/{name}", "caller": caller.username, "value": value}},
            )
            return Answer({"message": "success"}, status=202)
        raise ApiError(429, "Another job is in progress (the integration kept changing; try again)")

    async def _busy(self, obj: JSON) -> str | None:
        """Why a run counts as going on, or None; refuses what the operator would refuse (not Active)."""
        meta, status = obj["metadata"], obj.get("status") or {}
        phase = status.get("phase")
        if phase != Phase.ACTIVE.value:
            raise ApiError(
                400,
                f"Integration {meta['namespace']}/{meta['name']} is {phase or 'not ready'}, not active; it can "
                "sync once its connection test passes and spec.suspend is false",
            )
        pending = requested_value(obj)
        if pending is not None and pending != status.get("lastHandledSyncNow"):
            return f"sync-now {pending!r} is about to start"
        # The claim is what keeps a second run out (runner/claim.py); a Job whose pod has not claimed it yet counts
        # too, as for the operator's own sync-now.
        lease = await self.kube.get_lease(meta["namespace"], run_lease_name(meta["name"]))
        if lease is not None and not available(lease.get("spec") or {}, "", self.clock()):
            return f"{describe(lease)} holds the integration"
        jobs = await self.kube.list_jobs(meta["namespace"], selector(meta["name"]))
        return sync_running(jobs, status.get("lastSync"))


def _page(
    items: list[JSON],
    key: Callable[[JSON], views.Key],
    cursor: str | None,
    kind: str,
    scope: str,
    *,
    newest_first: bool,
) -> views.Page[JSON]:
    try:
        return views.page(items, key, cursor, kind, scope, newest_first=newest_first)
    except views.InvalidCursor:
        raise ApiError(400, "Invalid cursor: use the URL of a Link header of this list") from None


# --- the HTTP server -------------------------------------------------------------------------------------------------


def _json(status: int, body: JSON, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def build_app(api: ManagementApi, limiter: RateLimiter | None = None) -> web.Application:
    limiter = limiter or RateLimiter()

    async def answer(request: web.Request, endpoint: str, call: Callable[[Caller], Awaitable[Answer]]) -> web.Response:
        caller_name = "-"
        try:
            caller = await api.authenticate(request.headers.get("Authorization"))
            caller_name = caller.username
            headers = limiter.check(endpoint, caller.username)
            result = await call(caller)
        except ApiError as exc:
            log.info(
                "management API request refused",
                extra={"fields": {"path": request.path, "code": exc.status, "caller": caller_name, "why": exc.message}},
            )
            return _json(exc.status, {"message": exc.message}, exc.headers)
        except KubeError as exc:
            log.warning("management API: the Kubernetes API failed: %s", exc.message)
            return _json(503, {"message": f"The Kubernetes API failed: {exc.message}"})
        if result.link:
            headers["Link"] = result.link
        return _json(result.status, result.body, headers)

    async def list_integrations(request: web.Request) -> web.Response:
        cursor = request.query.get("cursor")
        return await answer(request, LIST, lambda caller: api.list_integrations(caller, cursor))

    async def sync(request: web.Request) -> web.Response:
        integration_id = request.match_info["integration_id"]
        return await answer(request, SYNC, lambda caller: api.sync(caller, integration_id))

    async def job_sync_status(request: web.Request) -> web.Response:
        integration_id, cursor = request.match_info["integration_id"], request.query.get("cursor")
        return await answer(request, STATUS, lambda caller: api.job_sync_status(caller, integration_id, cursor))

    @web.middleware
    async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # unknown path or method: still Braze's shape
            return _json(exc.status, {"message": exc.reason})
        except Exception:
            log.exception("management API: %s %s failed", request.method, request.path)
            return _json(500, {"message": "Internal error; the operator's log has the details"})
        return response

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/cdi/integrations", list_integrations)
    app.router.add_post("/cdi/integrations/{integration_id}/sync", sync)
    app.router.add_get("/cdi/integrations/{integration_id}/job_sync_status", job_sync_status)
    return app


class TlsFiles:
    """A server SSL context from cert_dir's tls.crt/tls.key, loaded again when the files change (a renewed
    certificate is picked up without a restart)."""

    def __init__(self, cert_dir: str) -> None:
        self.cert = os.path.join(cert_dir, WEBHOOK_CERT_FILE)
        self.key = os.path.join(cert_dir, WEBHOOK_KEY_FILE)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.loaded: tuple[float, float] | None = None
        self.reload()

    def reload(self) -> None:
        stamp = (os.path.getmtime(self.cert), os.path.getmtime(self.key))
        if stamp != self.loaded:
            self.context.load_cert_chain(self.cert, self.key)
            self.loaded = stamp

    async def keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(CERT_RELOAD_SECONDS)
            try:
                self.reload()
            except (OSError, ssl.SSLError) as exc:  # half-written during a renewal: the next round reads it
                log.warning("management API certificate not reloaded: %s", exc)


class Server:
    """The API on settings.addr:port (HTTPS with cert_dir's certificate, else plain HTTP)."""

    def __init__(self, api: ManagementApi, settings: ManagementApiSettings) -> None:
        self.api = api
        self.settings = settings
        self.runner: web.AppRunner | None = None
        self.refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        tls = TlsFiles(self.settings.cert_dir) if self.settings.cert_dir else None
        self.runner = web.AppRunner(build_app(self.api), access_log=None)  # our own log line, without the token
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.settings.addr, self.settings.port, ssl_context=tls.context if tls else None
        )
        await site.start()
        if tls is not None:
            self.refresh = asyncio.create_task(tls.keep_fresh())
        log.info(
            "serving Braze's CDI management API on %s://%s:%d",
            "https" if tls else "http",
            self.settings.addr,
            self.settings.port,
        )

    async def stop(self) -> None:
        if self.refresh is not None:
            self.refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.refresh
        if self.runner is not None:
            await self.runner.cleanup()
