"""`cdi operator`: kopf watches CdiIntegrations and WarehouseCredentials and calls the level-triggered reconcilers.

Every watch event (the initial listing included, so a restart picks everything up) reconciles its object, except one
that only a running sync's progress made (controller/runner_writes.py). An integration's reconcile runs in a task of
its own, so that kopf hands over the next event at once; events that come meanwhile ask for one reconcile more after
it (`Controller._reconcile_soon`). A credential's creation also reconciles the integrations that name it, so apply
order does not matter. A periodic resync (`$CDI_RESYNC_SECONDS`) reconciles every object again, which retries
failures, records finished runs and releases credentials no longer in use. One object is reconciled by one task at a
time (a lock per object). Only `on.event` handlers are used, so kopf adds no finalizer of its own and writes no
annotations, and it is spared the diff base those others need (`NoDiffBase`; a test keeps the registry to event
handlers); its progress storage is still set to our prefix in case handlers with state are added. kopf's line per
handled event ("Handler … succeeded.") is left out of the log. One process works at a time: with
`$CDI_LEADER_ELECTION_LEASE` (the chart sets it) everything starts only once the Lease is held
(controller/leader.py); kopf's own peering stays off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import kopf

from cdi_operator.api.json import JSON
from cdi_operator.api.models import CDI_PLURAL, GROUP, VERSION, WHC_PLURAL
from cdi_operator.controller import admission, connection
from cdi_operator.controller.credential import CredentialReconciler
from cdi_operator.controller.integration import IntegrationReconciler
from cdi_operator.controller.leader import LeaderLease, LeaseSettings
from cdi_operator.controller.management_api import ManagementApi
from cdi_operator.controller.management_api import Server as ManagementServer
from cdi_operator.controller.metrics import start_metrics_server
from cdi_operator.controller.observability import Observer
from cdi_operator.controller.runner_writes import Digests
from cdi_operator.controller.settings import OperatorSettings, SettingsError
from cdi_operator.kube import Kube, KubeError, load_config
from cdi_operator.kube.aio import KubeApi

log = logging.getLogger(__name__)

ANNOTATIONS_PREFIX = "cdi.ingest.dev"
KOPF_FINALIZER = "cdi.ingest.dev/kopf"
SHUTDOWN_SECONDS = 10.0  # for the reconciles under way at SIGTERM, within a pod's 30 s of grace


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds every watch event's "essence" (a deep copy of the object without its status) to diff it for
    on.create / on.update / on.field handlers and daemons; with only on.event handlers nothing reads it, and with
    1,000 syncs running the copy was a sixth of the event loop's time (benchmarks/README.md). So it is empty."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    return settings


class Controller:
    def __init__(self, settings: OperatorSettings, kube: KubeApi) -> None:
        self.settings = settings
        self.kube = kube
        self.observer = Observer()  # metrics and failure e-mail (controller/observability.py)
        # one ConnectionTester: $CDI_CONNECTION_TESTS_AT_ONCE holds for credentials and integrations together
        tester = connection.ConnectionTester.from_settings(settings)
        self.integrations = IntegrationReconciler(kube, settings, self.observer, tester)
        self.credentials = CredentialReconciler(kube, settings, self.observer.connection_test, tester=tester)
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.digests = Digests()  # of each integration as last reconciled from an event
        self.integrations.own_writes = self.digests.own
        self._reconciling: dict[tuple[str, str], asyncio.Task[None]] = {}  # asked for by events, by integration
        self._again: set[tuple[str, str]] = set()  # asked for again while running

    async def _locked(self, key: tuple[str, str, str], fn: Callable[[], Awaitable[None]], *, wait: bool = True) -> bool:
        """False when the reconcile failed."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        if not wait and lock.locked():
            return True
        async with lock:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile of %s %s/%s failed; retried on the next event or resync", *key)
                return False
            return True

    async def integration(self, namespace: str, name: str, *, wait: bool = True) -> bool:
        return await self._locked(
            (CDI_PLURAL, namespace, name), lambda: self.integrations.reconcile(namespace, name), wait=wait
        )

    async def integration_event(self, event_type: str, namespace: str, name: str, body: JSON) -> None:
        """A watch event of a CdiIntegration: reconciled, unless only a running sync's progress changed
        (runner_writes.py)."""
        if event_type == "DELETED":
            self.digests.forget(namespace, name)
            credential = ((body.get("spec") or {}).get("credentialRef") or {}).get("name")
            if credential:
                # first, without waiting for a reconcile of the integration still going on: a deletion of the
                # credential waits for this, and a GitOps prune may be uninstalling the operator at the same time
                await self.credential(namespace, credential)
            await self.integration(namespace, name)
            return
        if self.digests.unchanged(namespace, name, body):
            self.observer.watermark(namespace, name, body.get("status") or {})
            return
        self._reconcile_soon(namespace, name)

    def _reconcile_soon(self, namespace: str, name: str) -> None:
        """Reconciles the integration in a task of its own, so that kopf goes on to its next event at once: events
        that come while it runs are not queued in kopf (each a whole object: 400 MiB with 1,000 syncs starting at
        once) but ask for one more reconcile after it, as controller-runtime's work queue does."""
        key = (namespace, name)
        if key in self._reconciling:
            self._again.add(key)
            return
        self._reconciling[key] = asyncio.create_task(self._reconcile_while_asked(namespace, name))

    async def _reconcile_while_asked(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        try:
            while True:
                self._again.discard(key)
                if not await self.integration(namespace, name):
                    self.digests.forget(namespace, name)
                if key not in self._again or self.digests.latest_is_own(namespace, name):
                    return
        finally:
            del self._reconciling[key]

    async def settled(self) -> None:
        """Until no reconcile an event asked for is running."""
        while self._reconciling:
            await asyncio.wait(list(self._reconciling.values()))

    async def stop(self, grace: float) -> None:
        """Lets the reconciles events asked for finish for up to `grace` seconds, then cancels the rest."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.settled()
        running = list(self._reconciling.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def credential(self, namespace: str, name: str, *, wait: bool = True) -> None:
        await self._locked(
            (WHC_PLURAL, namespace, name), lambda: self.credentials.reconcile(namespace, name), wait=wait
        )

    async def integrations_naming(self, namespace: str, credential: str) -> None:
        """Reconciles the integrations that name a credential just created, instead of at the next resync: apply
        order does not matter, and one applied before its credential converges as soon as the credential exists."""
        names = [
            obj["metadata"]["name"]
            for obj in await self.kube.list_objects(CDI_PLURAL, namespace)
            if ((obj.get("spec") or {}).get("credentialRef") or {}).get("name") == credential
        ]
        await asyncio.gather(*(self.integration(namespace, name, wait=False) for name in names))

    async def resync_once(self) -> None:
        scopes: list[str | None] = list(self.settings.namespaces) or [None]
        tasks = []
        for scope in scopes:
            for plural, fn in ((CDI_PLURAL, self.integration), (WHC_PLURAL, self.credential)):
                for obj in await self.kube.list_objects(plural, scope):
                    meta = obj.get("metadata") or {}
                    tasks.append(fn(meta["namespace"], meta["name"], wait=False))
        await asyncio.gather(*tasks)

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                await self.resync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resync failed; trying again in %s s", self.settings.resync_seconds)


def connection_info(configuration: Any, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """kopf's connection from a kubernetes client configuration (as kopf.login_via_client reads it)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=settings.networking.trust_env,
    )


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # The same configuration as KubeApi (kube.load_config), loaded afresh: kopf logs in again after a 401, so
        # a rotated ServiceAccount token is picked up.
        return connection_info(load_config().api_client.configuration, kwargs["settings"])

    @kopf.on.event(GROUP, VERSION, CDI_PLURAL, registry=registry)
    async def integration_event(**kwargs: Any) -> None:
        raw = kwargs["event"]["object"]  # the plain dict the apiserver sent (kopf's `body` is a mapping view of it)
        await controller.integration_event(kwargs["type"], kwargs["namespace"], kwargs["name"], raw)

    @kopf.on.event(GROUP, VERSION, WHC_PLURAL, registry=registry)
    async def credential_event(**kwargs: Any) -> None:
        await controller.credential(kwargs["namespace"], kwargs["name"])
        if kwargs["type"] == "ADDED":
            await controller.integrations_naming(kwargs["namespace"], kwargs["name"])

    admission.register(registry, controller.kube, controller.settings)  # validating webhook, if $CDI_WEBHOOK_MODE
    return registry


async def operate(settings: OperatorSettings) -> bool:
    """Runs until SIGTERM/SIGINT (True) or until the leader Lease is lost (False)."""
    kube = KubeApi(load_config().api_client)
    if settings.metrics_port:  # also while waiting for the Lease: it is the liveness probe's endpoint
        start_metrics_server(settings.metrics_port)
        log.info("serving /metrics on port %d", settings.metrics_port)
    management: ManagementServer | None = None
    if settings.management_api.port:  # reads, and sync-now annotations that the working operator handles
        management = ManagementServer(ManagementApi(kube, settings.namespaces), settings.management_api)
        await management.start()
    lease: LeaderLease | None = None
    if settings.leader_lease is not None:
        namespace, name = settings.leader_lease
        identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        lease = LeaderLease(Kube(kube.api_client), LeaseSettings(namespace=namespace, name=name, identity=identity))
        await lease.acquire()
    controller = Controller(settings, kube)
    stop = asyncio.Event()
    resync = asyncio.create_task(controller.resync_forever())
    keeping = asyncio.create_task(lease.keep()) if lease is not None else None
    if keeping is not None:
        keeping.add_done_callback(lambda _: stop.set())  # lost: stop working at once
    try:
        await kopf.operator(
            registry=build_registry(controller),
            settings=kopf_settings(),
            standalone=True,
            clusterwide=settings.clusterwide,
            namespaces=settings.namespaces,
            stop_flag=stop,
        )
    finally:
        lost = keeping is not None and keeping.done() and not keeping.cancelled()
        # reconciles under way may finish, unless another operator holds the Lease now
        await controller.stop(grace=0 if lost else SHUTDOWN_SECONDS)
        resync.cancel()
        if keeping is not None:
            keeping.cancel()
        if lease is not None and not lost:
            await asyncio.to_thread(lease.release)
        if management is not None:
            await management.stop()
        kube.close()
    return not lost


def run() -> int:
    """The `cdi operator` command: 2 for bad settings, else runs until SIGTERM/SIGINT."""
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "cdi operator starting",
        extra={
            "fields": {
                "runner_image": settings.runner_image,
                "namespaces": ",".join(settings.namespaces) or "*",
                "resync_seconds": settings.resync_seconds,
            }
        },
    )
    # kopf logs every handled watch event ("Handler 'integration_event' succeeded."): with 1,000 syncs running that
    # was a tenth of the event loop's time; its warnings and errors stay
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        held = asyncio.run(operate(settings))
    except KubeError as exc:  # no usable Kubernetes credentials: say so, no traceback
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if not held:
        print("error: lost the leader Lease; exiting so that this pod restarts as a candidate", file=sys.stderr)
        return 1
    return 0
