"""Cutting a run's /users/track rows into requests where they are read, so that the sender works per request only.

Every row of an attributes, events or purchases sync goes to one array, so a run's requests are its objects in read
order cut after every `limit`, and each request's rows, with the row errors and the rows an earlier run delivered
that were read among them, make one contiguous segment of the read. `TrackBatcher.feed()` converts a chunk of the
warehouse's rows and returns the batches it completed, each with its objects' JSON already joined, what the
frontier keeps of its segment (frontier.py: its last UPDATED_AT, the one before that, the fingerprints of the rows
at the last), and the earlier batches that hold one of its users, which the sender acknowledges first so Braze
applies a user's rows in UPDATED_AT order. It runs in the reading process (reading.py) or the reader thread; what it
returns is small to pickle: no object per row crosses to the sender.

A user's last batch is remembered for HORIZON batches; the sender starts no batch before every batch HORIZON older
than it is settled (sync.py), so forgetting it never lets two of a user's rows be in flight at once.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from cdi_operator.braze.client import encode_object
from cdi_operator.runner.rows import Delivery, RowError

__all__ = ["HORIZON", "BatchedChunk", "Converter", "ReadyBatch", "TrackBatcher", "row_fingerprint"]

HORIZON = 512  # batches a user's last batch is remembered (about 38,000 rows at 75 a request)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Converter(Protocol):
    def convert(self, row: Sequence[Any]) -> Delivery | RowError: ...


def row_fingerprint(row: Sequence[Any]) -> str:
    """The fingerprint the frontier keeps for a row that is a row error: of the raw row."""
    return hashlib.blake2b(repr(tuple(row)).encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class ReadyBatch:
    """One request's objects and its segment of the read; `count` 0: a segment of row errors and skipped rows only."""

    seq: int
    target: str
    objects: bytes  # the objects' JSON, comma-separated: the inside of the request's array
    count: int
    updated_at: datetime | None  # the segment's last UPDATED_AT (None: no row of it had one)
    passed: datetime | None  # the UPDATED_AT before that in the segment, if any
    tie: list[str]  # fingerprints of the segment's rows at `updated_at`
    after: tuple[int, ...]  # seq of earlier batches holding one of this batch's users
    times: bytes  # each object's UPDATED_AT in microseconds since the epoch (array "q"), for a rejected one's error

    def object_at(self, index: int) -> tuple[Any, datetime]:
        """The object at `index` and its row's UPDATED_AT (rare: the row error of an object Braze rejected)."""
        micros = array("q", self.times)[index]
        return orjson.loads(b"[" + self.objects + b"]")[index], _EPOCH + micros * _MICROSECOND


@dataclass(slots=True)
class BatchedChunk:
    """What one chunk of the read became."""

    batches: list[ReadyBatch] = field(default_factory=list)
    row_errors: list[RowError] = field(default_factory=list)
    rows_read: int = 0
    rows_skipped: int = 0
    limit_exceeded: bool = False  # the run stops at spec.sync.maxRowsPerRun: nothing after this chunk


class TrackBatcher:
    """See the module docstring. `delivered_before` is the frontier's test of rows an earlier run delivered."""

    def __init__(
        self,
        converter: Converter,
        *,
        limit: int,
        max_rows: int,
        delivered_before: Callable[[datetime, str], bool],
    ) -> None:
        self._converter = converter
        self._limit = limit
        self._max_rows = max_rows
        self._delivered_before = delivered_before
        self._seq = 0
        self._target = ""
        self._objects: list[bytes] = []
        self._times = array("q")
        self._after: set[int] = set()
        self._last_batch_of_user: dict[str, int] = {}
        self._tie_at: datetime | None = None
        self._tie: list[str] = []
        self._passed: datetime | None = None
        self._rows = 0  # rows read, and of them skipped, in the whole run (for maxRowsPerRun)
        self._skipped = 0
        self._last_read_at: datetime | None = None
        self.stopped = False

    def feed(self, rows: Sequence[Sequence[Any]]) -> BatchedChunk:
        out = BatchedChunk()
        convert = self._converter.convert
        objects, times, after, users = self._objects, self._times, self._after, self._last_batch_of_user
        for row in rows:
            converted = convert(row)
            # The limit finishes the tie group it falls in: the next run can then start after it (frontier.py).
            if self._rows - self._skipped >= self._max_rows and converted.updated_at != self._last_read_at:
                out.limit_exceeded = self.stopped = True
                break
            self._rows += 1
            out.rows_read += 1
            self._last_read_at = converted.updated_at
            if isinstance(converted, RowError):
                out.row_errors.append(converted)
                if converted.updated_at is not None:
                    self._note(converted.updated_at, row_fingerprint(row))
                continue
            updated_at = converted.updated_at
            fingerprint = converted.fingerprint
            self._note(updated_at, fingerprint)
            if self._delivered_before(updated_at, fingerprint):
                self._skipped += 1
                out.rows_skipped += 1
                continue
            seq = self._seq
            earlier = users.get(converted.user_key)
            if earlier is not None and earlier != seq and earlier > seq - HORIZON:
                after.add(earlier)
            users[converted.user_key] = seq
            self._target = converted.target
            objects.append(encode_object(converted.body))
            times.append((updated_at - _EPOCH) // _MICROSECOND)
            if len(objects) >= self._limit:
                out.batches.append(self._close())
                objects, times, after, users = self._objects, self._times, self._after, self._last_batch_of_user
        return out

    def finish(self) -> BatchedChunk:
        """The batch still open, and the rows read since the last batch, at the end of the read."""
        out = BatchedChunk()
        if self._objects or self._tie_at is not None:
            out.batches.append(self._close())
        return out

    def _note(self, updated_at: datetime, fingerprint: str) -> None:
        if updated_at != self._tie_at:
            if self._tie_at is not None:
                self._passed = self._tie_at
            self._tie_at, self._tie = updated_at, [fingerprint]
        else:
            self._tie.append(fingerprint)

    def _close(self) -> ReadyBatch:
        batch = ReadyBatch(
            seq=self._seq,
            target=self._target,
            objects=b",".join(self._objects),
            count=len(self._objects),
            updated_at=self._tie_at,
            passed=self._passed,
            tie=self._tie,
            after=tuple(sorted(self._after)),
            times=self._times.tobytes(),
        )
        self._seq += 1
        self._objects, self._times, self._after = [], array("q"), set()
        self._tie_at, self._tie, self._passed = None, [], None
        if self._seq % HORIZON == 0:  # forget the users of batches the sender no longer waits on
            oldest = self._seq - HORIZON
            self._last_batch_of_user = {u: s for u, s in self._last_batch_of_user.items() if s > oldest}
        return batch
