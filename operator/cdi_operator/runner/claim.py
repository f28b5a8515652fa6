"""One run of an integration at a time, whoever starts it: a run's claim on its integration's Lease.

Every run, whatever started it (the schedule, sync-now, a Job's retry, `kubectl create job --from=cronjob/…`),
claims the `coordination.k8s.io/v1` Lease `cdi-run-<integration>` before it reads a row, renews it every third of
`spec.sync.leaseSeconds` while it lives, and releases it at its end. The CronJob's `concurrencyPolicy` cannot give
this guarantee (a Job it did not start itself is not in its `status.active`), nor can the operator (it may be down):
the API server's optimistic concurrency on the Lease (`resourceVersion`) can, so the claim is taken by the runner.

- A run that finds the Lease held by a live run sends nothing and is recorded as Skipped, naming the holder.
- A runner killed with SIGKILL stops renewing: its claim expires `leaseSeconds` after its last renewal, and the next
  run takes over. A retry of the same Job (the holder named that Job, so it is dead: a Job runs one pod at a time)
  waits for that expiry instead of skipping.
- A run whose renewals failed for most of a lease duration counts its claim as lost (`check()` raises `ClaimLost`),
  so that it never writes a watermark after another run may have taken over.

RBAC cannot restrict `create` to a name, so the operator creates the empty Lease (owned by the CdiIntegration)
and a runner's Role allows only `get` and `update` on that one name; a runner creates it only when it may (a Lease
deleted by hand, a runner started without the operator) and says what to grant otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdi_operator.api.models import GROUP, run_lease_name
from cdi_operator.kube import Conflict, Forbidden, Kube, KubeError
from cdi_operator.kube.leases import available, micro_time
from cdi_operator.runner.status_store import StatusStoreError

log = logging.getLogger(__name__)

JOB_ANNOTATION = f"{GROUP}/run-job"
POD_ANNOTATION = f"{GROUP}/run-pod"
TRIGGER_ANNOTATION = f"{GROUP}/run-trigger"
CONFLICT_RETRIES = 5
# A claim counts as lost once this share of a lease duration passed without a renewal: others see it expire only
# after the whole duration (by their clocks), so the holder stops first.
HELD_SHARE = 0.8


class ClaimLost(StatusStoreError):
    """This run no longer holds its integration's Lease: another run may hold it, nothing more may be written."""


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    trigger: str
    job: str | None = None
    pod: str | None = None


def describe(lease: dict[str, Any]) -> str:
    """The run that holds `lease`, for a Skipped record and its message."""
    spec = lease.get("spec") or {}
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    parts = [f"run {spec.get('holderIdentity')}"]
    details = [
        f"{label} {annotations[key]}"
        for label, key in (("Job", JOB_ANNOTATION), ("pod", POD_ANNOTATION), ("trigger", TRIGGER_ANNOTATION))
        if annotations.get(key)
    ]
    if spec.get("acquireTime"):
        details.append(f"since {spec['acquireTime']}")
    if details:
        parts.append(f"({', '.join(details)})")
    return " ".join(parts)


class RunClaim:
    """The claim of run `me` on CdiIntegration `namespace/integration`. The methods block: call them in a thread."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        integration: str,
        me: RunIdentity,
        *,
        lease_seconds: int,
        poll_seconds: float = 1.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = run_lease_name(integration)
        self.me = me
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._lease: dict[str, Any] | None = None  # as last written by this run
        self._renewed: float | None = None  # monotonic time of the last successful take or renewal
        self._lost = False
        self.took_over: str | None = None  # the run whose expired claim this run took: it died without a record

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def _read(self) -> dict[str, Any]:
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is not None:
            return lease
        body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": {}}
        try:
            return self.kube.create_lease(self.namespace, body)
        except Conflict:
            return self._read()
        except Forbidden:
            raise Forbidden(
                403,
                f"{self.where} does not exist and the runner may not create it: the operator creates it when the "
                "integration becomes Active; without the operator, create it or grant `create` on leases",
            ) from None

    def _write(self, lease: dict[str, Any], *, taking: bool) -> dict[str, Any]:
        now = datetime.now(UTC)
        spec = dict(lease.get("spec") or {})
        held_before = bool(spec.get("acquireTime"))
        previous = spec.get("holderIdentity")
        spec.update(holderIdentity=self.me.run_id, leaseDurationSeconds=self.lease_seconds, renewTime=micro_time(now))
        metadata = dict(lease["metadata"])
        if taking:
            self.took_over = previous if previous and previous != self.me.run_id else None
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if held_before else 0)
            annotations = dict(metadata.get("annotations") or {})
            for key, value in ((JOB_ANNOTATION, self.me.job), (POD_ANNOTATION, self.me.pod)):
                if value:
                    annotations[key] = value
                else:
                    annotations.pop(key, None)
            annotations[TRIGGER_ANNOTATION] = self.me.trigger
            metadata["annotations"] = annotations
        written = self.kube.replace_lease(self.namespace, self.name, {**lease, "metadata": metadata, "spec": spec})
        self._lease = written
        self._renewed = time.monotonic()
        return written

    def take(self) -> str | None:
        """Claim the integration: None when this run holds it now, else who holds it (`describe`). A dead earlier
        pod of this run's own Job is waited for (at most one lease duration), not skipped."""
        deadline = time.monotonic() + self.lease_seconds + 5 * self.poll_seconds
        conflicts = 0
        waiting = False
        while True:
            lease = self._read()
            spec = lease.get("spec") or {}
            if available(spec, self.me.run_id, datetime.now(UTC)):
                try:
                    self._write(lease, taking=True)
                except Conflict:
                    conflicts += 1
                    if conflicts > CONFLICT_RETRIES:
                        return f"{describe(lease)}: {self.where} kept changing"
                    continue  # another run wrote first: read again and decide again
                log.info("%s: run %s holds %s", self.namespace, self.me.run_id, self.where)
                return None
            annotations = (lease.get("metadata") or {}).get("annotations") or {}
            same_job = self.me.job is not None and annotations.get(JOB_ANNOTATION) == self.me.job
            if not same_job or time.monotonic() > deadline:
                return describe(lease)
            if not waiting:
                waiting = True
                log.info(
                    "%s: %s is held by an earlier pod of Job %s; waiting for it to expire",
                    self.namespace,
                    self.where,
                    self.me.job,
                )
            time.sleep(self.poll_seconds)

    def renew(self) -> None:
        """Renew the claim; marks it lost (and raises ClaimLost) when another run holds the Lease now."""
        if self._lease is None or self._lost:
            raise ClaimLost(f"{self.where}: this run does not hold it")
        lease = self._lease
        for _ in range(CONFLICT_RETRIES):
            try:
                self._write(lease, taking=False)
                return
            except Conflict:
                lease = self.kube.read_lease(self.namespace, self.name) or {}
                if (lease.get("spec") or {}).get("holderIdentity") != self.me.run_id:
                    self._lost = True
                    raise ClaimLost(f"{self.where} was taken over by {describe(lease)}") from None
        raise KubeError(409, f"{self.where} kept changing while renewing it")

    def held(self) -> bool:
        if self._lost or self._renewed is None:
            return False
        return time.monotonic() - self._renewed < self.lease_seconds * HELD_SHARE

    def check(self) -> None:
        """Raise ClaimLost unless this run surely still holds the integration."""
        if not self.held():
            self._lost = True
            raise ClaimLost(
                f"this run lost its claim on the integration ({self.where} not renewed within "
                f"{self.lease_seconds * HELD_SHARE:.0f}s, or taken over); it stops without writing a watermark"
            )

    async def keep(self) -> None:
        """Renew every third of the lease duration until cancelled or lost."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await asyncio.to_thread(self.renew)
            except ClaimLost as exc:
                log.error("%s: %s", self.namespace, exc)
                return
            except KubeError as exc:  # the API server may be back before the claim counts as lost
                log.warning("%s: renewing %s failed: %s", self.namespace, self.where, exc)

    def release(self) -> None:
        """Let the next run start at once (best effort: an unreleased claim expires anyway)."""
        if self._lease is None or self._lost:
            return
        lease = self._lease
        spec = {**(lease.get("spec") or {}), "holderIdentity": None, "renewTime": None}
        try:
            self.kube.replace_lease(self.namespace, self.name, {**lease, "spec": spec})
        except KubeError as exc:
            log.warning("%s: could not release %s: %s", self.namespace, self.where, exc)
        self._lease = self._renewed = None
