"""Reading and converting the rows of a run off the event loop: in a child process, or in the reader thread.

A pure-Python driver (redshift_connector) spends most of a core decoding rows, and conversion most of another; in
the runner's own process both would share one core with HTTP under the GIL. `ChildReader` runs the driver's
fetches and a `TrackBatcher` (batching.py: conversion, JSON encoding, cutting into requests) in a child process on
a connection of its own, and hands each chunk's ready requests to the runner over a pipe: the runner's process is
left with per-request work, the frontier's segments and HTTP. The pipe holds about one chunk, so the child is never
more than a chunk or two ahead, and memory stays one chunk whatever the table's size. `batch_in_thread()` is the
same in the runner's reader thread, for warehouses that cannot take a second connection (an embedded DuckDB file)
and for dry runs; `convert_in_thread()` converts row by row there for the data types sent to several arrays
(deletes, catalogs), which the runner batches itself.

Each row converted one by one comes with the fingerprint the frontier keeps for it (a RowError's is of the raw row).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cdi_operator.runner.batching import BatchedChunk, Converter, TrackBatcher, row_fingerprint
from cdi_operator.runner.rows import Delivery, RowError
from cdi_operator.warehouses.base import FailureReason, ReadWindow, Warehouse, WarehouseError

__all__ = ["ChildReader", "Converted", "Converter", "Read", "batch_in_thread", "close_chunks", "convert_in_thread"]

_EXIT_WAIT = 5.0  # seconds a child that has finished may take to exit before it is terminated
Converted = tuple[Delivery | RowError, str]  # (what the row became, its fingerprint for the frontier)


@dataclass(frozen=True)
class Read:
    """What to read: `Warehouse.read_changes`'s arguments but the warehouse."""

    table: Sequence[str]
    columns: Sequence[str]
    updated_at: str
    window: ReadWindow
    chunk_rows: int

    def chunks(self, warehouse: Warehouse) -> Iterator[list[tuple[Any, ...]]]:
        return warehouse.read_changes(self.table, self.columns, self.updated_at, self.window, self.chunk_rows)


def close_chunks(chunks: Iterator[Any]) -> None:
    """End a read: a warehouse's chunks (a generator) end its query and cursor when closed."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _convert(converter: Converter, chunk: list[tuple[Any, ...]]) -> list[Converted]:
    out: list[Converted] = []
    append = out.append
    for row in chunk:
        converted = converter.convert(row)
        append((converted, converted.fingerprint if type(converted) is Delivery else row_fingerprint(row)))
    return out


def convert_in_thread(warehouse: Warehouse, read: Read, converter: Converter) -> Iterator[list[Converted]]:
    """The converted chunks of `read`, read and converted by the caller's thread."""
    chunks = read.chunks(warehouse)
    try:
        for chunk in chunks:
            yield _convert(converter, chunk)
    finally:
        close_chunks(chunks)


def batch_in_thread(warehouse: Warehouse, read: Read, batcher: TrackBatcher) -> Iterator[BatchedChunk]:
    """The batched chunks of `read`, read and batched by the caller's thread."""
    chunks = read.chunks(warehouse)
    try:
        yield from _batched(chunks, batcher)
    finally:
        close_chunks(chunks)


def _batched(chunks: Iterator[list[tuple[Any, ...]]], batcher: TrackBatcher) -> Iterator[BatchedChunk]:
    for chunk in chunks:
        yield batcher.feed(chunk)
        if batcher.stopped:
            break
    yield batcher.finish()


class ChildReader:
    """The batched chunks of a `Read`, read and batched by a child process on the connection `reopen()` opens.

    `close()` (from any thread) ends the child; the warehouse ends its read transaction with the connection. A
    warehouse failure in the child is raised by `next()` as the same WarehouseError."""

    def __init__(self, reopen: Callable[[], Warehouse], read: Read, batcher: TrackBatcher) -> None:
        # fork: the child starts at once with the batcher and the opener as they are (nothing to pickle); it
        # opens a connection of its own, writes to its end of the pipe, and leaves without running any cleanup.
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._child = context.Process(
            target=_child, args=(reopen, read, batcher, sender, self._receiver), name="cdi-reader", daemon=True
        )
        self._child.start()
        sender.close()
        self._finished = False

    def __iter__(self) -> ChildReader:
        return self

    def __next__(self) -> BatchedChunk:
        if self._finished:
            raise StopIteration
        try:
            kind, value = pickle.loads(self._receiver.recv_bytes())
        except (EOFError, OSError):
            if self._finished:
                raise StopIteration from None
            self.close()
            raise WarehouseError(
                FailureReason.QUERY_FAILED,
                f"the reading process ended without a word (exit code {self._child.exitcode}); see the runner's log",
            ) from None
        if kind == "rows":
            assert isinstance(value, BatchedChunk)
            return value
        self._child.join(_EXIT_WAIT)  # it has said all it will: let it leave by itself
        self.close()
        if kind == "error":
            raise WarehouseError(FailureReason(value[0]), value[1])
        raise StopIteration

    def close(self) -> None:
        self._finished = True
        if self._child.is_alive():
            self._child.terminate()
        self._child.join()
        self._receiver.close()


def _child(
    reopen: Callable[[], Warehouse], read: Read, batcher: TrackBatcher, out: Connection, runners_end: Connection
) -> None:
    # The runner's end of the pipe, closed here: when the runner dies (SIGKILL), the next write fails and the child
    # ends, instead of waiting forever on a pipe it holds open itself.
    runners_end.close()
    # The runner's signal handling is not the child's: the inherited wakeup fd would hand a signal sent to the child
    # (terminate()) to the runner's event loop, as if the runner had been stopped.
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)

    def send(kind: str, value: Any) -> None:
        out.send_bytes(pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL))

    try:
        warehouse = reopen()
        try:
            for batched in _batched(read.chunks(warehouse), batcher):
                send("rows", batched)
        finally:
            with contextlib.suppress(Exception):
                warehouse.close()
        send("done", None)
    except WarehouseError as exc:
        with contextlib.suppress(OSError):
            send("error", (exc.reason.value, exc.message))
    except (BrokenPipeError, EOFError):
        pass  # the runner stopped reading
    except Exception as exc:
        with contextlib.suppress(OSError):
            send("error", (FailureReason.QUERY_FAILED.value, f"reading failed: {type(exc).__name__}: {exc}"))
    finally:
        out.close()
