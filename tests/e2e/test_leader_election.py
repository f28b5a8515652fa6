"""Leader election on a real Lease: one operator works at a time; the next takes over when the first releases
it or stops renewing it."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from cdi_operator.controller.leader import LeaderLease, LeaseSettings
from cdi_operator.kube import Kube

pytestmark = pytest.mark.e2e


def candidate(api: client.ApiClient, namespace: str, identity: str) -> LeaderLease:
    settings = LeaseSettings(
        namespace=namespace,
        name="cdi-operator",
        identity=identity,
        duration_seconds=2,
        renew_seconds=0.5,
        retry_seconds=0.2,
    )
    return LeaderLease(Kube(api), settings)


async def test_second_operator_waits_until_the_first_releases_or_stops_renewing(
    kube_api: client.ApiClient, namespace: str
) -> None:
    first, second = candidate(kube_api, namespace, "first"), candidate(kube_api, namespace, "second")
    await asyncio.wait_for(first.acquire(), 10)
    keeping = asyncio.create_task(first.keep())
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(3)  # longer than the lease duration: renewals keep it
    assert not waiting.done()

    keeping.cancel()
    await asyncio.to_thread(first.release)
    await asyncio.wait_for(waiting, 5)  # released: taken at once, not after expiry
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("cdi-operator", namespace)
    assert lease.spec.holder_identity == "second" and lease.spec.lease_transitions == 1

    # the holder dies without releasing: the Lease is taken after it expires, and the old holder learns it lost it
    await asyncio.wait_for(first.acquire(), 10)
    first_keeping = asyncio.create_task(first.keep())
    assert await asyncio.wait_for(second.keep(), 10) is None
    assert not first_keeping.done()
    first_keeping.cancel()
