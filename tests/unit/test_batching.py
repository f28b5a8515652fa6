"""Cutting /users/track rows into requests where they are read (runner/batching.py): the requests, their segments of
the read as the frontier keeps them, a user's earlier batches, maxRowsPerRun and rows an earlier run delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cdi_operator.api.models import DataType, Watermark
from cdi_operator.runner import batching
from cdi_operator.runner.batching import BatchedChunk, ReadyBatch, TrackBatcher
from cdi_operator.runner.columns import plan_columns
from cdi_operator.runner.converter import RowConverter
from cdi_operator.runner.frontier import Frontier
from cdi_operator.runner.rows import RowErrorReason

T0 = datetime(2026, 5, 1, 8, 0, 0, tzinfo=UTC)


def at(second: int) -> datetime:
    return T0 + timedelta(seconds=second)


def row(second: int, user: str, **payload: Any) -> tuple[Any, ...]:
    return (at(second), user, orjson.dumps(payload or {"n": second}).decode())


def batcher(limit: int = 3, max_rows: int = 1000, frontier: Frontier | None = None) -> TrackBatcher:
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    delivered_before = (frontier or Frontier(None)).delivered_before
    return TrackBatcher(
        RowConverter(DataType.CUSTOM_ATTRIBUTES, plan),
        limit=limit,
        max_rows=max_rows,
        delivered_before=delivered_before,
    )


def objects(batch: ReadyBatch) -> list[dict[str, Any]]:
    return orjson.loads(b"[" + batch.objects + b"]")  # type: ignore[no-any-return]


def everything(b: TrackBatcher, *chunks: list[tuple[Any, ...]]) -> list[BatchedChunk]:
    return [b.feed(chunk) for chunk in chunks] + [b.finish()]


def test_rows_are_cut_into_requests_in_read_order_across_chunks() -> None:
    out = everything(batcher(), [row(i, f"u{i}") for i in range(4)], [row(i, f"u{i}") for i in range(4, 8)])
    batches = [b for chunk in out for b in chunk.batches]
    assert [b.count for b in batches] == [3, 3, 2]
    assert [b.seq for b in batches] == [0, 1, 2]
    assert [o["external_id"] for b in batches for o in objects(b)] == [f"u{i}" for i in range(8)]
    assert {b.target for b in batches} == {"attributes"}
    assert [c.rows_read for c in out] == [4, 4, 0]
    assert objects(batches[0])[1] == {"n": 1, "external_id": "u1"}


def test_a_segment_keeps_its_last_updated_at_the_one_before_and_the_fingerprints_at_the_last() -> None:
    out = everything(batcher(limit=4), [row(1, "a"), row(2, "b"), row(2, "c"), row(2, "d"), row(3, "e"), row(3, "f")])
    first, second = [b for chunk in out for b in chunk.batches]
    assert (first.updated_at, first.passed, len(first.tie)) == (at(2), at(1), 3)
    assert (second.updated_at, second.passed, len(second.tie)) == (at(3), None, 2)
    frontier = Frontier(None)
    for batch in (first, second):
        frontier.add_segment(batch.updated_at, batch.passed, batch.tie, done=True)
        frontier.advance()
        assert frontier.watermark() == Watermark(updated_at=batch.updated_at, boundary_fingerprints=sorted(batch.tie))


def test_segments_give_the_frontier_what_rows_one_by_one_would() -> None:
    rows = [row(s, f"u{i}") for i, s in enumerate([1, 1, 2, 2, 2, 2, 2, 3, 4, 4])]
    rows.insert(3, (at(2), "bad", "not json"))  # a row error inside a tie group
    by_segment = Frontier(None)
    for chunk in everything(batcher(limit=2), rows[:6], rows[6:]):
        for batch in chunk.batches:
            by_segment.add_segment(batch.updated_at, batch.passed, batch.tie, done=True)
        by_segment.advance()
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    converter = RowConverter(DataType.CUSTOM_ATTRIBUTES, plan)
    by_row = Frontier(None)
    for r in rows:
        converted = converter.convert(r)
        fingerprint = getattr(converted, "fingerprint", None) or batching.row_fingerprint(r)
        by_row.add(converted.updated_at, fingerprint, done=True)
    by_row.advance()
    assert by_segment.watermark() == by_row.watermark()
    assert by_segment.watermark(tie_group_read=True) == by_row.watermark(tie_group_read=True)
    assert by_segment._passed == by_row._passed  # what an oversized tie group falls back to


def test_row_errors_are_returned_and_take_their_place_in_the_segment() -> None:
    out = everything(batcher(limit=2), [row(1, "a"), (at(1), None, '{"x": 1}'), row(2, "b"), (at(3), "c", "[1]")])
    errors = [e.reason for chunk in out for e in chunk.row_errors]
    assert errors == [RowErrorReason.MISSING_IDENTIFIER, RowErrorReason.PAYLOAD_NOT_OBJECT]
    first, rest = [b for chunk in out for b in chunk.batches]
    assert (first.count, first.updated_at, len(first.tie)) == (2, at(2), 1)
    assert len([b for b in [first] if b.passed == at(1)]) == 1
    # the row error read after the last request is a segment of its own, with no request, at the end of the read
    assert (rest.count, rest.updated_at, rest.objects) == (0, at(3), b"")


def test_a_users_later_row_waits_for_the_batch_that_holds_the_earlier_one() -> None:
    out = everything(batcher(limit=2), [row(1, "a"), row(1, "b"), row(2, "c"), row(3, "a"), row(4, "b")])
    batches = [b for chunk in out for b in chunk.batches]
    assert [b.after for b in batches] == [(), (0,), (0,)]


def test_users_are_remembered_for_the_horizon_only(monkeypatch: Any) -> None:
    monkeypatch.setattr(batching, "HORIZON", 4)
    b = batcher(limit=1)
    out = everything(b, [row(0, "a"), row(1, "u1"), row(2, "u2"), row(3, "a")])
    assert [x.after for chunk in out for x in chunk.batches][3] == (0,)  # 3 batches later: still remembered
    # 4 batches later: forgotten, as the sender starts no batch before all 4 or more older are settled (sync.py)
    out = everything(b, [row(i, f"v{i}") for i in range(4, 7)] + [row(7, "a")])
    assert [x.after for chunk in out for x in chunk.batches][3] == ()
    assert len(b._last_batch_of_user) <= 2 * 4


def test_max_rows_per_run_stops_after_the_tie_group_it_falls_in() -> None:
    b = batcher(limit=10, max_rows=2)
    first = b.feed([row(1, "a"), row(2, "b"), row(2, "c"), row(3, "d")])
    assert first.limit_exceeded and b.stopped
    assert first.rows_read == 3
    (rest,) = b.finish().batches
    assert [o["external_id"] for o in objects(rest)] == ["a", "b", "c"]


def test_rows_an_earlier_run_delivered_are_skipped_but_kept_in_the_segment() -> None:
    plan = plan_columns(DataType.CUSTOM_ATTRIBUTES, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"])
    delivered = RowConverter(DataType.CUSTOM_ATTRIBUTES, plan).convert(row(5, "a"))
    frontier = Frontier(Watermark(updated_at=at(5), boundary_fingerprints=[delivered.fingerprint]))  # type: ignore[union-attr]
    out = everything(batcher(frontier=frontier), [row(5, "a"), row(5, "b")])
    assert [c.rows_skipped for c in out] == [1, 0]
    (batch,) = [b for chunk in out for b in chunk.batches]
    assert [o["external_id"] for o in objects(batch)] == ["b"]
    assert len(batch.tie) == 2  # both fingerprints stay at the boundary


def test_a_rejected_object_is_found_with_its_updated_at() -> None:
    out = everything(batcher(), [row(1, "a"), row(2, "b", note='with, a comma and a "quote"'), row(3, "c")])
    (batch,) = [b for chunk in out for b in chunk.batches]
    assert batch.object_at(1) == ({"note": 'with, a comma and a "quote"', "external_id": "b"}, at(2))
