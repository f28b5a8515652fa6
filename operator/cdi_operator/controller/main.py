"""`cdi operator`: kopf watches CdiIntegrations and WarehouseCredentials and calls the level-triggered reconcilers.

Every watch event (the initial listing included, so a restart picks everything up) reconciles its object; a
periodic resync (`$CDI_RESYNC_SECONDS`) reconciles every object again, which retries failures, notices a credential
created after its integration, records finished runs and releases credentials no longer in use. One object is
reconciled by one task at a time (a lock per object). Only `on.event` handlers are used, so kopf adds no finalizer of
its own and writes no annotations; its progress storage is still set to our prefix in case handlers with state are
added. Run one replica (standalone, no peering).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from cdi_operator.api.models import GROUP, VERSION
from cdi_operator.controller import admission
from cdi_operator.controller.credential import CredentialReconciler
from cdi_operator.controller.integration import IntegrationReconciler
from cdi_operator.controller.kubeapi import CDI, WHC, KubeApi, load_api_client
from cdi_operator.controller.observability import Observer
from cdi_operator.controller.settings import OperatorSettings, SettingsError
from cdi_operator.metrics import start_metrics_server

log = logging.getLogger(__name__)

ANNOTATIONS_PREFIX = "cdi.ingest.dev"
KOPF_FINALIZER = "cdi.ingest.dev/kopf"


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
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
        self.integrations = IntegrationReconciler(kube, settings, self.observer)
        self.credentials = CredentialReconciler(kube, settings, self.observer.connection_test)
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def _locked(self, key: tuple[str, str, str], fn: Callable[[], Awaitable[None]], *, wait: bool = True) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        if not wait and lock.locked():
            return
        async with lock:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile of %s %s/%s failed; retried on the next event or resync", *key)

    async def integration(self, namespace: str, name: str, *, wait: bool = True) -> None:
        await self._locked((CDI, namespace, name), lambda: self.integrations.reconcile(namespace, name), wait=wait)

    async def credential(self, namespace: str, name: str, *, wait: bool = True) -> None:
        await self._locked((WHC, namespace, name), lambda: self.credentials.reconcile(namespace, name), wait=wait)

    async def resync_once(self) -> None:
        scopes: list[str | None] = list(self.settings.namespaces) or [None]
        tasks = []
        for scope in scopes:
            for plural, fn in ((CDI, self.integration), (WHC, self.credential)):
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


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # In a pod the ServiceAccount, else $KUBECONFIG: through the kubernetes client, like KubeApi.
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(GROUP, VERSION, CDI, registry=registry)
    async def integration_event(**kwargs: Any) -> None:
        namespace, name, body = kwargs["namespace"], kwargs["name"], kwargs["body"]
        await controller.integration(namespace, name)
        if kwargs["type"] == "DELETED":
            credential = ((body.get("spec") or {}).get("credentialRef") or {}).get("name")
            if credential:
                await controller.credential(namespace, credential)

    @kopf.on.event(GROUP, VERSION, WHC, registry=registry)
    async def credential_event(**kwargs: Any) -> None:
        await controller.credential(kwargs["namespace"], kwargs["name"])

    admission.register(registry, controller.kube, controller.settings)  # validating webhook, if $CDI_WEBHOOK_MODE
    return registry


async def operate(settings: OperatorSettings) -> None:
    kube = KubeApi(load_api_client())
    controller = Controller(settings, kube)
    if settings.metrics_port:
        start_metrics_server(settings.metrics_port)
        log.info("serving /metrics on port %d", settings.metrics_port)
    resync = asyncio.create_task(controller.resync_forever())
    try:
        await kopf.operator(
            registry=build_registry(controller),
            settings=kopf_settings(),
            standalone=True,
            clusterwide=settings.clusterwide,
            namespaces=settings.namespaces,
        )
    finally:
        resync.cancel()
        kube.close()


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
    asyncio.run(operate(settings))
    return 0
