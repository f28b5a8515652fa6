"""The delivery frontier: how far the watermark may advance while batches finish out of order.

Rows enter in the order the warehouse returns them (by UPDATED_AT), one by one or as a segment: a run of rows read
one after another that are done together (the rows of one request with the row errors read among them,
batching.py), of which the frontier keeps only the last UPDATED_AT, the one before it, and the fingerprints at the
last. A row is done when Braze acknowledged it, when it was a row error, or when an earlier run had already
delivered it. The watermark moves over the longest done prefix only, so a crash never skips a row that was read but
not acknowledged.

At the watermark's own timestamp it lists the rows delivered (their fingerprints), so that rows tied with it are
neither sent twice nor skipped. A bulk load can give a million rows one UPDATED_AT, far more fingerprints than a CR
status can hold (etcd's limit is about 1.5 MB), so past MAX_BOUNDARY_FINGERPRINTS the watermark says
`boundaryComplete` instead, which is only true of a timestamp whose rows have all been delivered:
- once every row at the frontier's timestamp has been read and delivered (the run reached the end of its window,
  or stopped at maxRowsPerRun, which always finishes the tie group it is in): that timestamp;
- otherwise the last timestamp the frontier moved past (rows come ordered by UPDATED_AT, so all of its rows have
  been read, and the frontier moves only over delivered ones), or nothing new. A crash inside an oversized tie
  group then sends that group again rather than skip any of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime

from cdi_operator.api.models import Watermark

MAX_BOUNDARY_FINGERPRINTS = 10_000  # about 190 kB of status


class Entry:
    """A row, or a segment of rows: its last UPDATED_AT, the one before that in it, the fingerprints at the last."""

    __slots__ = ("done", "fingerprints", "passed", "updated_at")

    def __init__(
        self, updated_at: datetime | None, fingerprints: Sequence[str], done: bool, passed: datetime | None = None
    ) -> None:
        self.updated_at = updated_at
        self.fingerprints = fingerprints
        self.done = done
        self.passed = passed


class Frontier:
    def __init__(self, start: Watermark | None) -> None:
        self._pending: deque[Entry] = deque()
        self.updated_at: datetime | None = start.updated_at if start else None
        self._boundary: set[str] = set(start.boundary_fingerprints) if start else set()
        self._start = start
        self._start_updated_at = self.updated_at
        self._start_boundary = frozenset(self._boundary)
        self._start_complete = bool(start and start.boundary_complete)
        self._passed: datetime | None = None  # the last timestamp moved past: all of its rows are delivered
        self.changed = False

    def add(self, updated_at: datetime | None, fingerprint: str, done: bool = False) -> Entry:
        entry = Entry(updated_at, (fingerprint,), done)
        self._pending.append(entry)
        return entry

    def add_segment(
        self, updated_at: datetime | None, passed: datetime | None, fingerprints: Sequence[str], done: bool = False
    ) -> Entry:
        """Rows read one after another and done together: `updated_at` the last one's, `passed` the UPDATED_AT
        before it among them (None: all at `updated_at`), `fingerprints` those of the rows at `updated_at`."""
        entry = Entry(updated_at, fingerprints, done, passed)
        self._pending.append(entry)
        return entry

    def delivered_before(self, updated_at: datetime, fingerprint: str) -> bool:
        """True for a row at the starting boundary that an earlier run already delivered."""
        return updated_at == self._start_updated_at and (self._start_complete or fingerprint in self._start_boundary)

    def advance(self) -> None:
        pending = self._pending
        while pending and pending[0].done:
            entry = pending.popleft()
            if entry.updated_at is None:
                continue
            if self.updated_at is None or entry.updated_at > self.updated_at:
                self._passed = entry.passed if entry.passed is not None else self.updated_at
                self.updated_at = entry.updated_at
                self._boundary = set(entry.fingerprints)
            else:
                self._boundary.update(entry.fingerprints)
            self.changed = True

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def watermark(self, tie_group_read: bool = False) -> Watermark | None:
        """The watermark to save, None when nothing new can be; `tie_group_read` when every row at the frontier's
        timestamp has been read (the reader went past it, or to the end of its window)."""
        if self.updated_at is None:
            return None
        if self._start_complete and self.updated_at == self._start_updated_at:
            return self._start
        if len(self._boundary) <= MAX_BOUNDARY_FINGERPRINTS:
            return Watermark(updated_at=self.updated_at, boundary_fingerprints=sorted(self._boundary))
        if tie_group_read and not self._pending:
            return Watermark(updated_at=self.updated_at, boundary_complete=True)
        if self._passed is not None and self._passed != self._start_updated_at:
            return Watermark(updated_at=self._passed, boundary_complete=True)
        return None  # the saved watermark still holds
