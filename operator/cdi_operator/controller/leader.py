"""Leader election on a coordination.k8s.io Lease: one operator process works at a time.

Two operators at once would both create a sync-now's Job and both e-mail a failure; the chart's Deployment runs one
replica (Recreate), and this guards what a Deployment cannot: a rollout's overlap, a manual scale-up, a second
release. The whole operator (kopf's handlers and the resync loop alike) starts only once the Lease is held; a
process that loses it (its renewals failed for a whole lease duration, so another may have taken over) stops
working at once and exits non-zero to be restarted as a candidate. On a clean shutdown the Lease is released so
the next pod takes over without waiting for it to expire.

Times are the apiserver's own Lease fields (`renewTime` + `leaseDurationSeconds`), compared to this machine's
clock, as client-go's leader election does.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cdi_operator.api.json import JSON
from cdi_operator.kube import Conflict, Kube, KubeError, NotFound
from cdi_operator.kube.leases import available, micro_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    duration_seconds: int = 15
    renew_seconds: float = 5.0
    retry_seconds: float = 2.0


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderLease:
    """`await acquire()` waits until this process holds the Lease; `keep()` renews it until lost or cancelled."""

    def __init__(self, kube: Kube, settings: LeaseSettings) -> None:
        self.kube = kube
        self.settings = settings

    def _read(self) -> JSON | None:
        return self.kube.read_lease(self.settings.namespace, self.settings.name)

    def _try(self) -> bool:
        """One attempt to take or renew the Lease (optimistic concurrency); True when held afterwards."""
        s = self.settings
        now = _now()
        current = self._read()
        spec = dict((current or {}).get("spec") or {})
        if not available(spec, s.identity, now):
            return False
        taking = spec.get("holderIdentity") != s.identity
        spec.update(
            holderIdentity=s.identity,
            leaseDurationSeconds=s.duration_seconds,
            renewTime=micro_time(now),
        )
        if taking:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
        body: JSON = {"metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec}
        try:
            if current is None:
                self.kube.create_lease(s.namespace, body)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.kube.replace_lease(s.namespace, s.name, body)
        except (Conflict, NotFound):  # someone else wrote first: read again next time
            return False
        if taking:
            log.info("leader election: %s holds Lease %s/%s", s.identity, s.namespace, s.name)
        return True

    async def acquire(self) -> None:
        waiting_logged = False
        while True:
            try:
                if await asyncio.to_thread(self._try):
                    return
            except KubeError as exc:
                log.warning("leader election: Lease %s/%s: %s", self.settings.namespace, self.settings.name, exc)
            if not waiting_logged:
                log.info("leader election: another operator holds the Lease; waiting to take over")
                waiting_logged = True
            await asyncio.sleep(self.settings.retry_seconds)

    async def keep(self) -> None:
        """Returns when the Lease is lost (not renewed for a whole lease duration)."""
        last_renewed = _now()
        while True:
            await asyncio.sleep(self.settings.renew_seconds)
            try:
                held = await asyncio.to_thread(self._try)
            except KubeError as exc:
                log.warning("leader election: renewing failed: %s", exc)
                held = False
            if held:
                last_renewed = _now()
            elif _now() - last_renewed > timedelta(seconds=self.settings.duration_seconds):
                log.error("leader election: lost Lease %s/%s", self.settings.namespace, self.settings.name)
                return

    def release(self) -> None:
        """Let the next candidate take over now (best effort; an expired Lease is taken anyway)."""
        s = self.settings
        try:
            current = self._read()
            if current is None or (current.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            current["spec"]["holderIdentity"] = None
            current["spec"]["renewTime"] = None
            self.kube.replace_lease(s.namespace, s.name, current)
        except KubeError as exc:
            log.warning("leader election: could not release the Lease: %s", exc)
