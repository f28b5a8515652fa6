"""One sync run: read the rows changed since the watermark, validate, batch, send to Braze, checkpoint.

Reading and conversion run one chunk ahead of processing, in a child process when the caller can open a second
connection to the warehouse, else in a worker thread (reading.py); for /users/track the rows are cut into requests
there too (batching.py), for deletes and catalogs here; batches go out concurrently (the Braze client bounds
requests in flight and their rate); the watermark follows the frontier of acknowledged rows (frontier.py). Two rows
of the same user are never in flight at once, so Braze applies them in UPDATED_AT order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import orjson

from cdi_operator.api import reasons
from cdi_operator.api.models import (
    CdiIntegration,
    DataType,
    RowErrorSample,
    RunResult,
    RunSummary,
    SyncOptions,
    WarehouseCredential,
    Watermark,
)
from cdi_operator.braze.client import CATALOG_ITEM_LIMIT, BrazeClient, BrazeError, ResizableSemaphore
from cdi_operator.runner.batching import HORIZON, BatchedChunk, ReadyBatch, TrackBatcher
from cdi_operator.runner.cadence import checkpoint_interval
from cdi_operator.runner.catalog_rows import DELETE_TARGET, CatalogRowConverter
from cdi_operator.runner.columns import ColumnPlan, SourceColumnsError, plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.frontier import Entry, Frontier
from cdi_operator.runner.reading import ChildReader, Converted, Read, batch_in_thread, close_chunks, convert_in_thread
from cdi_operator.runner.rows import Delivery, RowError, RowErrorReason
from cdi_operator.runner.state import CheckpointDeferred, StateStore
from cdi_operator.runner.values import mask_email, mask_phone
from cdi_operator.warehouses.base import FailureReason, ReadWindow, Warehouse, WarehouseError

log = logging.getLogger(__name__)

ROW_ERROR_SAMPLE = 20
# How long a run's last checkpoint is tried again while the API server defers it (429, 503, no answer): the rows are
# delivered, and a run that gives up sends them all again next time. On SIGTERM less: the pod has 30 s of grace,
# and the run's record is written after it.
LAST_CHECKPOINT_SECONDS = 60.0
STOPPING_CHECKPOINT_SECONDS = 10.0
DELETE_BATCH_LIMIT = 50
_TRACKED = frozenset({DataType.CUSTOM_ATTRIBUTES, DataType.CUSTOM_EVENTS, DataType.PURCHASE_EVENTS})
Trigger = Literal["schedule", "syncNow", "local"]
T = TypeVar("T")


@dataclass(frozen=True)
class SyncJob:
    """What one run needs to know about its integration."""

    key: str  # namespace/name, for logs
    data_type: DataType
    table: tuple[str, ...]  # qualified name parts for the warehouse
    options: SyncOptions
    max_objects_per_request: int = 75
    catalog: str | None = None  # catalogItems: the Braze catalog's name
    update_existing_only: bool = False
    source: str | None = None  # the table's address (table_address); None: a watermark of any source is kept

    @classmethod
    def for_integration(cls, integration: CdiIntegration, credential: WarehouseCredential) -> SyncJob:
        """The job of `integration`; raises SyncFailed when its source does not fit the credential's warehouse."""
        warehouse = credential.spec.type
        problems = integration.spec.source.problems_for(warehouse)
        if problems:
            raise SyncFailed(reasons.INVALID_SOURCE, "; ".join(problems))
        braze = integration.spec.braze
        return cls(
            key=f"{integration.metadata.namespace}/{integration.metadata.name}",
            data_type=integration.spec.data_type,
            table=integration.spec.source.qualified_parts(warehouse),
            options=integration.spec.sync,
            max_objects_per_request=braze.max_objects_per_request if braze else 75,
            catalog=integration.spec.catalog.name if integration.spec.catalog else None,
            update_existing_only=integration.spec.update_existing_only,
            source=credential.spec.table_address(integration.spec.source),
        )


@dataclass
class Progress:
    rows_read: int = 0
    rows_synced: int = 0
    rows_failed: int = 0
    rows_skipped: int = 0
    rows_total: int | None = None  # rows in the read window, when the caller asked for an estimate
    requests: int = 0
    watermark: datetime | None = None
    finished: bool = False


@dataclass
class DryRunReport:
    """What a dry run would have sent."""

    requests: int = 0
    objects_by_target: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)


class SyncFailed(Exception):
    """A sync-level failure: nothing more can be sent in this run. `reason` is a status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class _Batch:
    target: str
    ready: ReadyBatch | None = None  # cut where the rows were read (batching.py); else bodies and deliveries
    bodies: list[Any] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    positions: dict[str, int] = field(default_factory=dict)  # catalogs: item key -> index (ids unique per request)
    after: set[_Batch] = field(default_factory=set)  # batches that must be acknowledged before this one is sent
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # acknowledged, or failed
    delivered: bool = False

    @property
    def rows(self) -> int:
        """The rows this batch delivers when acknowledged."""
        return self.ready.count if self.ready is not None else len(self.entries)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _identifier_of(body: Any) -> str:
    if isinstance(body, bytes):  # converted in the reading process: the object's JSON
        body = orjson.loads(body)
    if isinstance(body, dict):
        for key in ("external_id", "braze_id"):
            if key in body:
                return f"{key}={body[key]}"
        alias = body.get("user_alias", body if "alias_name" in body else None)
        if isinstance(alias, dict):
            return f"alias={alias.get('alias_label')}:{alias.get('alias_name')}"
        if "email" in body:
            return f"email={mask_email(str(body['email']))}"
        if "phone" in body:
            return f"phone={mask_phone(str(body['phone']))}"
        if "id" in body:
            return f"id={body['id']}"
        return ""
    return f"id={body}"


class SyncRun:
    """The state of one run. Use `run_sync()`; this class only keeps the pieces of a run together."""

    def __init__(
        self,
        job: SyncJob,
        warehouse: Warehouse,
        braze: BrazeClient | None,
        store: StateStore,
        *,
        trigger: Trigger,
        on_progress: Callable[[Progress], None] | None,
        now: Callable[[], datetime],
        estimate_total: bool = False,
        reopen: Callable[[], Warehouse] | None = None,
    ) -> None:
        self.job = job
        self.warehouse = warehouse
        self.reopen = reopen
        self.braze = braze
        self.store = store
        self.trigger: Trigger = trigger
        self.on_progress = on_progress
        self.now = now
        self.estimate_total = estimate_total
        self.progress = Progress()
        self.dry_run_report = DryRunReport() if braze is None else None
        self.row_errors: list[RowErrorSample] = []
        self.row_errors_by_reason: dict[str, int] = {}
        self.future_rows = 0
        self.undated_rows = 0
        self.limit_exceeded = False
        self.source_changed: str | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdi-reader")
        self._failure: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: dict[str, _Batch] = {}
        self._last_batch_of_user: dict[str, _Batch] = {}
        self._unsettled: dict[int, _Batch] = {}  # batches cut where read (by seq, oldest first) not acknowledged
        self._window = ResizableSemaphore(self._batches_ahead())
        self._checkpoint_lock = asyncio.Lock()
        self._advanced = asyncio.Event()
        self._stop_checkpoints = asyncio.Event()
        self.frontier = Frontier(None)
        self._last_read_at: datetime | None = None
        self._tie_group_read = False  # every row at the frontier's timestamp was read (see Frontier.watermark)
        self._saved: Watermark | None = None

    def _batches_ahead(self) -> int:
        """Batches started and not settled: twice the requests the client may have in flight now, so that the
        next ones are ready as answers come, and memory follows the window, not `max_in_flight`."""
        return 2 * (self.braze.in_flight_limit if self.braze is not None else 1)

    async def _in_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    # --- the run -------------------------------------------------------------------------------------------------

    async def execute(self) -> RunSummary:
        started = self.now()
        watermark_before = self._saved = await self._in_reader(self.store.load_watermark)
        # The watermark belongs to the table it was made on; one saved before watermarks named it is kept.
        saved_on = watermark_before.source if watermark_before is not None else None
        if saved_on is not None and self.job.source is not None and saved_on != self.job.source:
            self.source_changed = saved_on
            log.warning(
                "%s: the watermark belongs to %s, not %s: starting from the beginning",
                self.job.key,
                self.source_changed,
                self.job.source,
            )
            watermark_before = self._saved = None
        self.frontier = Frontier(watermark_before)
        try:
            plan = await self._plan()
            until = started - timedelta(seconds=self.job.options.settle_seconds)
            self.future_rows = await self._in_reader(
                self.warehouse.count_after, self.job.table, plan.columns[0], started
            )
            if self.future_rows:
                log.warning(
                    "%s: %d row(s) have UPDATED_AT in the future; they will be sent once their time has come",
                    self.job.key,
                    self.future_rows,
                )
            self.undated_rows = await self._in_reader(self.warehouse.count_undated, self.job.table, plan.columns[0])
            if self.undated_rows:
                log.warning("%s: %s", self.job.key, self._undated_message())
            since = watermark_before.updated_at if watermark_before else None
            if since is None or since <= until:
                if self.estimate_total:
                    self.progress.rows_total = await self._count_window(plan.columns[0], since, until)
                await self._stream(plan, ReadWindow(since=since, until=until))
            result = self._result()
            message = self._message()
        except (SyncFailed, WarehouseError, BrazeError, SourceColumnsError) as exc:
            await self._cancel_sends()
            result, message = RunResult.ERROR, _failure_message(exc)
            log.error("%s: sync failed: %s", self.job.key, message)
            self._failure = exc
        except asyncio.CancelledError:  # SIGTERM (runner/termination.py): save what was delivered up to now
            await self._cancel_sends()
            await self._checkpoint(patience=STOPPING_CHECKPOINT_SECONDS)
            raise
        finally:
            self._reader.shutdown(wait=False, cancel_futures=True)
        await self._checkpoint(patience=LAST_CHECKPOINT_SECONDS)
        self.progress.finished = True
        self._report_progress()
        summary = RunSummary(
            trigger=self.trigger,
            started_at=started,
            finished_at=self.now(),
            result=result,
            rows_read=self.progress.rows_read,
            rows_synced=self.progress.rows_synced,
            rows_failed=self.progress.rows_failed,
            rows_skipped=self.progress.rows_skipped,
            future_rows=self.future_rows,
            undated_rows=self.undated_rows,
            watermark_before=watermark_before.updated_at if watermark_before else None,
            watermark=self.frontier.updated_at if self.braze is None else (self._saved and self._saved.updated_at),
            message=message,
            row_errors_by_reason=dict(sorted(self.row_errors_by_reason.items())),
            row_errors=self.row_errors,
            source_changed=self.source_changed,
        )
        if self.braze is not None:
            await asyncio.to_thread(self.store.record_run, summary)
        return summary

    async def _count_window(self, updated_at: str, since: datetime | None, until: datetime) -> int:
        """Rows in the read window, for a progress bar: two counts, since the protocol counts rows after a time."""
        after = since - timedelta(microseconds=1) if since is not None else datetime(1, 1, 2, tzinfo=UTC)
        from_since = await self._in_reader(self.warehouse.count_after, self.job.table, updated_at, after)
        beyond = await self._in_reader(self.warehouse.count_after, self.job.table, updated_at, until)
        return max(from_since - beyond, 0)

    async def _plan(self) -> ColumnPlan:
        description = await self._in_reader(self.warehouse.describe, self.job.table)
        try:
            return plan_columns(self.job.data_type, [c.name for c in description.columns])
        except SourceColumnsError as exc:
            raise SyncFailed(FailureReason.COLUMN_MISSING.value, "; ".join(exc.problems)) from None

    async def _stream(self, plan: ColumnPlan, window: ReadWindow) -> None:
        converter = (
            CatalogRowConverter(plan)
            if self.job.data_type is DataType.CATALOG_ITEMS
            else RowConverter(self.job.data_type, plan, update_existing_only=self.job.update_existing_only)
        )
        read = Read(self.job.table, plan.columns, plan.columns[0], window, self.job.options.chunk_rows)
        chunks: Iterator[list[Converted]] | Iterator[BatchedChunk]
        batched = self.job.data_type in _TRACKED
        if batched:
            batcher = TrackBatcher(
                converter,
                limit=self._batch_limit(),
                max_rows=self.job.options.max_rows_per_run,
                delivered_before=self.frontier.delivered_before,
            )
            if self.reopen is not None and self.braze is not None:
                chunks = await self._in_reader(ChildReader, self.reopen, read, batcher)
            else:
                chunks = batch_in_thread(self.warehouse, read, batcher)
        else:
            chunks = convert_in_thread(self.warehouse, read, converter)
        checkpoints = asyncio.create_task(self._checkpoint_every(self.job.options.checkpoint_seconds))
        try:
            pending = asyncio.ensure_future(self._in_reader(next, chunks, None))
            while True:
                chunk = await pending
                # A batched read ends by itself at maxRowsPerRun, with the batch it had open.
                if chunk is None or (self.limit_exceeded and not batched):
                    break
                pending = asyncio.ensure_future(self._in_reader(next, chunks, None))
                if isinstance(chunk, BatchedChunk):
                    await self._process_batched(chunk)
                else:
                    await self._process_chunk(chunk)
                self._raise_if_failed()
            await self._in_reader(close_chunks, chunks)
            for target in list(self._open):
                await self._dispatch(target)
            while self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_EXCEPTION)
                self._raise_if_failed()
            self._raise_if_failed()  # a batch that failed before the last ones were started
            self._tie_group_read = True
        finally:
            if isinstance(chunks, ChildReader):
                chunks.close()  # a failed run leaves the child mid-read; it must not outlive the run
            self._stop_checkpoints.set()
            self._advanced.set()
            await checkpoints

    async def _process_chunk(self, chunk: list[Converted]) -> None:
        frontier = self.frontier
        limit = self.job.options.max_rows_per_run
        progress = self.progress
        batch_limit = self._batch_limit()
        catalog = self.job.data_type is DataType.CATALOG_ITEMS
        for converted, fingerprint in chunk:
            # The limit finishes the tie group it falls in: the next run can then start after it (frontier.py).
            if progress.rows_read - progress.rows_skipped >= limit and converted.updated_at != self._last_read_at:
                self.limit_exceeded = True
                break
            progress.rows_read += 1
            self._last_read_at = converted.updated_at
            if isinstance(converted, RowError):
                frontier.add(converted.updated_at, fingerprint, done=True)
                self._row_error(converted)
                continue
            if frontier.delivered_before(converted.updated_at, converted.fingerprint):
                frontier.add(converted.updated_at, converted.fingerprint, done=True)
                progress.rows_skipped += 1
                continue
            earlier = self._last_batch_of_user.get(converted.user_key)
            if earlier is not None and earlier.target != converted.target and self._open.get(earlier.target) is earlier:
                # A catalog item put, then deleted (or the reverse): the earlier batch must go first, and waiting
                # on a batch still open could wait on itself later.
                await self._dispatch(earlier.target)
            batch = self._open.get(converted.target)
            if batch is None:
                batch = self._open[converted.target] = _Batch(converted.target)
            if earlier is not None and earlier is not batch:
                batch.after.add(earlier)
            if catalog:
                position = batch.positions.get(converted.user_key)
                if position is not None:  # a later row for the same item in one request: the later one wins
                    batch.bodies[position] = converted.body
                    batch.deliveries[position] = converted
                    batch.entries.append(frontier.add(converted.updated_at, converted.fingerprint))
                    continue
                batch.positions[converted.user_key] = len(batch.bodies)
            self._last_batch_of_user[converted.user_key] = batch
            batch.users.add(converted.user_key)
            batch.bodies.append(converted.body)
            batch.deliveries.append(converted)
            batch.entries.append(frontier.add(converted.updated_at, converted.fingerprint))
            if len(batch.bodies) >= batch_limit:
                await self._dispatch(converted.target)
        frontier.advance()
        if frontier.changed:
            self._advanced.set()
        self._report_progress()

    async def _process_batched(self, chunk: BatchedChunk) -> None:
        progress = self.progress
        progress.rows_read += chunk.rows_read
        progress.rows_skipped += chunk.rows_skipped
        for error in chunk.row_errors:
            self._row_error(error)
        if chunk.limit_exceeded:
            self.limit_exceeded = True
        frontier = self.frontier
        unsettled = self._unsettled
        for ready in chunk.batches:
            entry = frontier.add_segment(ready.updated_at, ready.passed, ready.tie, done=not ready.count)
            if not ready.count:
                continue
            batch = _Batch(ready.target, ready=ready, entries=[entry])
            batch.after = {unsettled[seq] for seq in ready.after if seq in unsettled}
            unsettled[ready.seq] = batch
            await self._start(batch)
        frontier.advance()
        if frontier.changed:
            self._advanced.set()
        self._report_progress()

    def _batch_limit(self) -> int:
        if self.job.data_type is DataType.USER_DELETES:
            return DELETE_BATCH_LIMIT
        if self.job.data_type is DataType.CATALOG_ITEMS:
            return CATALOG_ITEM_LIMIT
        if self.braze is not None:  # the BrazeWorkspace's contract may allow fewer than the integration asks for
            return min(self.job.max_objects_per_request, self.braze.settings.max_objects_per_request)
        return self.job.max_objects_per_request

    async def _dispatch(self, target: str) -> None:
        await self._start(self._open.pop(target))

    async def _start(self, batch: _Batch) -> None:
        self._raise_if_failed()
        if self.braze is None:
            self._record_dry_run(batch)
            self._acknowledge(batch, SendOutcome(errors={}))
            return
        self._window.resize(self._batches_ahead())
        await self._window.acquire()
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        await asyncio.sleep(0)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # kept in self._failure, raised by the run: retrieved, so asyncio does not log it

    async def _send(self, batch: _Batch) -> None:
        assert self.braze is not None
        try:
            if batch.ready is not None and not await self._settled_beyond_horizon(batch.ready.seq):
                return
            for earlier in batch.after:
                await earlier.settled.wait()
                if not earlier.delivered:
                    return  # the run is failing; sending now would put this user's rows out of order
            if batch.ready is not None:
                ready = batch.ready
                result = await self.braze.track_encoded(batch.target, ready.objects, ready.count)  # type: ignore[arg-type]
            elif self.job.catalog is not None:
                if batch.target == DELETE_TARGET:
                    ids = [body["id"] for body in batch.bodies]
                    result = await self.braze.catalog_delete(self.job.catalog, ids)
                else:
                    result = await self.braze.catalog_put(self.job.catalog, batch.bodies)
            elif self.job.data_type is DataType.USER_DELETES:
                result = await self.braze.delete(batch.target, batch.bodies)  # type: ignore[arg-type]
            else:
                result = await self.braze.track(batch.target, batch.bodies)  # type: ignore[arg-type]
            self.progress.requests += 1
            self._acknowledge(batch, SendOutcome(errors=result.errors))
        except BaseException as exc:
            if self._failure is None and not isinstance(exc, asyncio.CancelledError):
                self._failure = exc
            raise
        finally:
            batch.settled.set()  # a failed batch stays in _unsettled: the batches of its users must not go after it
            self._window.release()

    async def _settled_beyond_horizon(self, seq: int) -> bool:
        """Wait until every batch HORIZON or more older than `seq` is settled (batching.py forgets their users);
        False when one of them failed (the run is failing)."""
        while self._unsettled:
            oldest, batch = next(iter(self._unsettled.items()))
            if oldest > seq - HORIZON:
                break
            await batch.settled.wait()
            if not batch.delivered:
                return False  # else _acknowledge took it out of _unsettled
        return True

    def _acknowledge(self, batch: _Batch, outcome: SendOutcome) -> None:
        for index, message in outcome.errors.items():
            if index < 0:
                log.warning("%s: Braze reported a problem not tied to one object: %s", self.job.key, message)
                continue
            if batch.ready is not None and index < batch.ready.count:
                body, updated_at = batch.ready.object_at(index)
            elif 0 <= index < len(batch.deliveries):
                body, updated_at = batch.deliveries[index].body, batch.deliveries[index].updated_at
            else:
                continue
            self._row_error(
                RowError(
                    reason=RowErrorReason.BRAZE_REJECTED,
                    message=f"Braze rejected the object: {message}",
                    identifier=_identifier_of(body),
                    updated_at=updated_at,
                )
            )
        self.progress.rows_synced += batch.rows - sum(1 for i in outcome.errors if i >= 0)
        for entry in batch.entries:
            entry.done = True
        for user in batch.users:
            if self._last_batch_of_user.get(user) is batch:
                del self._last_batch_of_user[user]
        batch.delivered = True
        batch.settled.set()
        if batch.ready is not None:
            self._unsettled.pop(batch.ready.seq, None)
        self.frontier.advance()
        if self.frontier.changed:
            self._advanced.set()

    def _record_dry_run(self, batch: _Batch) -> None:
        report = self.dry_run_report
        assert report is not None
        report.requests += 1
        report.objects_by_target[batch.target] = report.objects_by_target.get(batch.target, 0) + batch.rows
        bodies = batch.bodies
        if batch.ready is not None and len(report.sample) < 10:
            bodies = orjson.loads(b"[" + batch.ready.objects + b"]")
        for body in bodies[: max(0, 10 - len(report.sample))]:
            report.sample.append({batch.target: body})

    def _row_error(self, error: RowError) -> None:
        self.progress.rows_failed += 1
        reason = str(error.reason)
        self.row_errors_by_reason[reason] = self.row_errors_by_reason.get(reason, 0) + 1
        if len(self.row_errors) < ROW_ERROR_SAMPLE:
            self.row_errors.append(
                RowErrorSample(
                    reason=reason, identifier=error.identifier, updated_at=error.updated_at, message=error.message
                )
            )
        # Every row error, one line each, for the cluster's log pipeline; the message names the column or payload
        # key and the fix, never a value (rows.py), and the identifier is masked.
        fields = {
            "integration": self.job.key,
            "reason": reason,
            "identifier": error.identifier,
            "updated_at": error.updated_at.isoformat() if error.updated_at else "",
            "error": error.message,
        }
        log.warning("row error", extra={"fields": fields})

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _cancel_sends(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _checkpoint_every(self, least: float) -> None:
        # Stopped by a flag, never cancelled: a save cut short would race with the next write of the state.
        started = time.monotonic()
        while True:
            await self._advanced.wait()
            if self._stop_checkpoints.is_set():
                return
            self._advanced.clear()
            await self._checkpoint(periodic=True)
            with contextlib.suppress(TimeoutError):
                interval = checkpoint_interval(least, time.monotonic() - started)
                await asyncio.wait_for(self._stop_checkpoints.wait(), interval)

    async def _checkpoint(self, *, periodic: bool = False, patience: float = 0.0) -> None:
        """Save the frontier's watermark; a periodic one the store defers is left to the next (`periodic`), another
        is tried again for up to `patience` seconds."""
        if self.braze is None:
            return  # a dry run never moves the watermark
        async with self._checkpoint_lock:
            self.frontier.advance()
            watermark = self.frontier.watermark(tie_group_read=self._tie_group_read)
            self.frontier.changed = False
            if watermark is not None and watermark.source != self.job.source:
                watermark = watermark.model_copy(update={"source": self.job.source})
            if watermark is None or watermark == self._saved:
                return
            deadline, wait = time.monotonic() + patience, 1.0
            while True:
                try:
                    await asyncio.to_thread(self.store.save_watermark, watermark)
                    break
                except CheckpointDeferred as exc:
                    if periodic:
                        self.frontier.changed = True
                        self._advanced.set()  # the next checkpoint, one interval later, writes it
                        log.warning("%s: checkpoint deferred (%s); the next one saves this progress", self.job.key, exc)
                        return
                    if time.monotonic() + wait > deadline:
                        self.frontier.changed = True
                        raise
                    log.warning("%s: last checkpoint deferred (%s); trying again in %g s", self.job.key, exc, wait)
                except BaseException:
                    self.frontier.changed = True
                    raise
                await asyncio.sleep(wait)
                wait = min(wait * 2, 8.0)
            self._saved = watermark
            self.progress.watermark = watermark.updated_at

    def _undated_message(self) -> str:
        return (
            f"{self.undated_rows} row(s) of {'.'.join(self.job.table)} have no UPDATED_AT and are never synced; "
            "give them one (e.g. the time they were written) to send them"
        )

    def _report_progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _result(self) -> RunResult:
        if self.limit_exceeded:
            return RunResult.LIMIT_EXCEEDED
        return RunResult.PARTIAL if self.progress.rows_failed else RunResult.SUCCESS

    def _message(self) -> str:
        parts = []
        if self.source_changed is not None:
            parts.append(f"started from the beginning of {self.job.source}: the watermark was {self.source_changed}'s")
        if self.limit_exceeded:
            parts.append(
                f"stopped at spec.sync.maxRowsPerRun={self.job.options.max_rows_per_run}; the next run continues"
            )
        if self.row_errors_by_reason:
            counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.row_errors_by_reason.items()))
            parts.append(f"row errors by reason: {counts}")
        if self.future_rows:
            parts.append(f"{self.future_rows} row(s) dated in the future wait for their time")
        if self.undated_rows:
            parts.append(self._undated_message())
        return "; ".join(parts)


@dataclass(frozen=True)
class SendOutcome:
    errors: dict[int, str]


def _failure_message(exc: BaseException) -> str:
    if isinstance(exc, SourceColumnsError):
        return "; ".join(exc.problems)
    return str(exc)


def failure_reason(exc: BaseException | None) -> str | None:
    """The status reason of a failed run's cause."""
    if isinstance(exc, SyncFailed):
        return exc.reason
    if isinstance(exc, WarehouseError):
        return exc.reason.value
    if isinstance(exc, BrazeError):
        return f"Braze{exc.reason}"
    return None


async def run_sync(
    job: SyncJob,
    warehouse: Warehouse,
    braze: BrazeClient | None,
    store: StateStore,
    *,
    trigger: Trigger = "local",
    on_progress: Callable[[Progress], None] | None = None,
    now: Callable[[], datetime] = utc_now,
    estimate_total: bool = False,
    reopen: Callable[[], Warehouse] | None = None,
) -> tuple[RunSummary, SyncRun]:
    """Run one sync. `braze=None` is a dry run: everything is read and validated, nothing sent or saved.

    `estimate_total` counts the rows to read first (two COUNT queries), so that progress can show a bar. `reopen`
    opens a second connection to the warehouse: given, the rows of /users/track data types are read and converted
    in a child process on it (reading.py), so that the driver's decoding and the conversion run on a core of
    their own.
    """
    run = SyncRun(
        job,
        warehouse,
        braze,
        store,
        trigger=trigger,
        on_progress=on_progress,
        now=now,
        estimate_total=estimate_total,
        reopen=reopen,
    )
    start = time.monotonic()
    summary = await run.execute()
    log.info(
        "%s: %s in %.1fs: read %d, synced %d, failed %d, skipped %d",
        job.key,
        summary.result.value,
        time.monotonic() - start,
        summary.rows_read,
        summary.rows_synced,
        summary.rows_failed,
        summary.rows_skipped,
    )
    return summary, run
