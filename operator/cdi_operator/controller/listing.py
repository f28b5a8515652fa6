"""One LIST shared by the concurrent reconciles that need it, each result at least as fresh as the call.

The duplicate-table check of a CdiIntegration needs every integration of its namespace. Listing them in every
reconcile is O(N) per reconcile, O(N²) when N integrations are reconciled at once (start-up, a resync, N applied
together): with 1,000 integrations that held 1,000 lists of 1,000 objects in memory (gigabytes) and queued 1,000
LIST calls. Here a call joins the next LIST of its namespace, one that starts after the call was made, so it never
sees a state older than its own start (what a LIST of its own would give) while concurrent callers share one
request and one index of its objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Slot(Generic[T]):
    def __init__(self) -> None:
        self.running: asyncio.Future[T] | None = None
        self.next: asyncio.Future[T] | None = None


class SharedList(Generic[T]):
    """`await get(namespace)`: `fetch(namespace)`, shared by the callers waiting at the same time."""

    def __init__(self, fetch: Callable[[str], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._slots: dict[str, _Slot[T]] = {}

    async def get(self, namespace: str) -> T:
        slot = self._slots.setdefault(namespace, _Slot())
        if slot.next is None:
            slot.next = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._run(namespace, slot, slot.next))
        return await asyncio.shield(slot.next)

    async def _run(self, namespace: str, slot: _Slot[T], future: asyncio.Future[T]) -> None:
        previous = slot.running
        if previous is not None:  # started before some of our callers asked: wait for it, then list afresh
            await asyncio.wait([previous])
        slot.running, slot.next = future, None  # callers from now on wait for the LIST after this one
        try:
            future.set_result(await self._fetch(namespace))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # handed to every caller
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits any more
        finally:
            if slot.running is future:
                slot.running = None
            if slot.running is None and slot.next is None:
                self._slots.pop(namespace, None)
