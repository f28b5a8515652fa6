"""The delivery frontier: how far the watermark may advance while batches finish out of order.

Rows enter in the order the warehouse returns them (by UPDATED_AT). A row is done when Braze acknowledged it, when it
was a row error, or when an earlier run had already delivered it. The watermark moves over the longest done prefix
only, so a crash never skips a row that was read but not acknowledged.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

from cdi_operator.api.models import Watermark


class Entry:
    __slots__ = ("done", "fingerprint", "updated_at")

    def __init__(self, updated_at: datetime | None, fingerprint: str, done: bool) -> None:
        self.updated_at = updated_at
        self.fingerprint = fingerprint
        self.done = done


class Frontier:
    def __init__(self, start: Watermark | None) -> None:
        self._pending: deque[Entry] = deque()
        self.updated_at: datetime | None = start.updated_at if start else None
        self._boundary: set[str] = set(start.boundary_fingerprints) if start else set()
        self._start_updated_at = self.updated_at
        self._start_boundary = frozenset(self._boundary)
        self.changed = False

    def add(self, updated_at: datetime | None, fingerprint: str, done: bool = False) -> Entry:
        entry = Entry(updated_at, fingerprint, done)
        self._pending.append(entry)
        return entry

    def delivered_before(self, updated_at: datetime, fingerprint: str) -> bool:
        """True for a row at the starting boundary that an earlier run already delivered."""
        return updated_at == self._start_updated_at and fingerprint in self._start_boundary

    def advance(self) -> None:
        pending = self._pending
        while pending and pending[0].done:
            entry = pending.popleft()
            if entry.updated_at is None:
                continue
            if self.updated_at is None or entry.updated_at > self.updated_at:
                self.updated_at = entry.updated_at
                self._boundary = {entry.fingerprint}
            else:
                self._boundary.add(entry.fingerprint)
            self.changed = True

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def watermark(self) -> Watermark | None:
        if self.updated_at is None:
            return None
        return Watermark(updated_at=self.updated_at, boundary_fingerprints=sorted(self._boundary))
