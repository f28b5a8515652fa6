"""The delivery frontier: the watermark moves over the done prefix only, so a crash never skips a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cdi_operator.api.models import Watermark
from cdi_operator.runner import frontier as frontier_module
from cdi_operator.runner.frontier import Frontier

T0 = datetime(2026, 5, 1, 8, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
T2 = T0 + timedelta(seconds=2)
T3 = T0 + timedelta(seconds=3)


def watermark(at: datetime, *fingerprints: str) -> Watermark:
    return Watermark.model_validate({"updatedAt": at, "boundaryFingerprints": list(fingerprints)})


def test_fresh_frontier_has_no_watermark() -> None:
    frontier = Frontier(None)
    assert frontier.watermark() is None
    assert frontier.updated_at is None
    assert frontier.in_flight == 0
    frontier.advance()
    assert frontier.watermark() is None
    assert frontier.changed is False


def test_advances_over_done_rows_in_order() -> None:
    frontier = Frontier(None)
    a = frontier.add(T1, "a")
    b = frontier.add(T2, "b")
    a.done = True
    b.done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "b")
    assert frontier.in_flight == 0
    assert frontier.changed is True


def test_out_of_order_done_marks_do_not_pass_a_pending_row() -> None:
    frontier = Frontier(watermark(T0, "x"))
    a = frontier.add(T1, "a")
    b = frontier.add(T2, "b")
    c = frontier.add(T3, "c")
    c.done = True  # a later batch was acknowledged first
    b.done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T0, "x")  # a is still in flight: nothing moves
    assert frontier.changed is False
    assert frontier.in_flight == 3
    a.done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T3, "c")
    assert frontier.in_flight == 0


def test_stops_right_before_the_first_pending_row() -> None:
    frontier = Frontier(None)
    entries = [frontier.add(T0 + timedelta(seconds=i), f"r{i}") for i in range(5)]
    for i in (0, 1, 3, 4):
        entries[i].done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T1, "r1")
    assert frontier.in_flight == 3


def test_rows_added_done_move_it_on_advance() -> None:
    # Row errors and rows delivered by an earlier run are done as soon as they are read.
    frontier = Frontier(None)
    frontier.add(T1, "err", done=True)
    assert frontier.watermark() is None  # only advance() moves it
    frontier.advance()
    assert frontier.watermark() == watermark(T1, "err")


def test_ties_accumulate_fingerprints() -> None:
    frontier = Frontier(None)
    for fingerprint in ("c", "a", "b"):
        frontier.add(T1, fingerprint, done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T1, "a", "b", "c")  # sorted: stable across runs


def test_tie_with_the_starting_watermark_keeps_its_fingerprints() -> None:
    frontier = Frontier(watermark(T1, "old1", "old2"))
    frontier.add(T1, "new", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T1, "new", "old1", "old2")


def test_a_new_timestamp_resets_the_boundary_set() -> None:
    frontier = Frontier(watermark(T0, "x", "y"))
    frontier.add(T1, "a", done=True)
    frontier.add(T1, "b", done=True)
    frontier.add(T2, "c", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "c")


def test_partial_tie_group_keeps_only_the_done_part() -> None:
    # Two rows at T2; the first is acknowledged, the second is not: the next run must still send the second.
    frontier = Frontier(None)
    frontier.add(T1, "a", done=True)
    frontier.add(T2, "b", done=True)
    pending = frontier.add(T2, "c")
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "b")
    pending.done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "b", "c")


def test_duplicate_fingerprint_recorded_once() -> None:
    frontier = Frontier(None)
    frontier.add(T1, "a", done=True)
    frontier.add(T1, "a", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T1, "a")


def test_delivered_before_only_for_the_starting_watermark() -> None:
    frontier = Frontier(watermark(T1, "a", "b"))
    assert frontier.delivered_before(T1, "a")
    assert frontier.delivered_before(T1, "b")
    assert not frontier.delivered_before(T1, "c")  # a late row with the same UPDATED_AT is still sent
    assert not frontier.delivered_before(T2, "a")  # same content, newer change: sent
    assert not frontier.delivered_before(T0, "a")

    # Rows this run delivers do not count as delivered before, even after the watermark moved onto them.
    frontier.add(T1, "c", done=True)
    frontier.add(T2, "d", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "d")
    assert not frontier.delivered_before(T1, "c")
    assert not frontier.delivered_before(T2, "d")
    assert frontier.delivered_before(T1, "a")


def test_delivered_before_compares_instants_not_zones() -> None:
    frontier = Frontier(watermark(T1, "a"))
    berlin = T1.astimezone(ZoneInfo("Europe/Berlin"))
    assert frontier.delivered_before(berlin, "a")


def test_nothing_delivered_before_without_a_starting_watermark() -> None:
    assert not Frontier(None).delivered_before(T1, "a")


def test_rows_without_updated_at_do_not_move_it() -> None:
    frontier = Frontier(watermark(T1, "a"))
    frontier.add(None, "no-time", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T1, "a")
    assert frontier.in_flight == 0  # but they do not block the rows behind them
    frontier.add(T2, "b", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "b")


def test_pending_row_without_updated_at_still_blocks() -> None:
    frontier = Frontier(None)
    blocker = frontier.add(None, "no-time")
    frontier.add(T2, "b", done=True)
    frontier.advance()
    assert frontier.watermark() is None
    blocker.done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "b")


def test_only_none_rows_leave_no_watermark() -> None:
    frontier = Frontier(None)
    frontier.add(None, "x", done=True)
    frontier.advance()
    assert frontier.watermark() is None


def test_changed_flag_can_be_reset_by_the_checkpointer() -> None:
    frontier = Frontier(None)
    frontier.add(T1, "a", done=True)
    frontier.advance()
    assert frontier.changed
    frontier.changed = False
    frontier.advance()
    assert not frontier.changed  # nothing new
    frontier.add(T2, "b", done=True)
    frontier.advance()
    assert frontier.changed


def test_starting_watermark_is_not_mutated() -> None:
    start = watermark(T1, "a")
    frontier = Frontier(start)
    frontier.add(T1, "b", done=True)
    frontier.add(T2, "c", done=True)
    frontier.advance()
    assert start == watermark(T1, "a")
    assert frontier.delivered_before(T1, "a")
    assert not frontier.delivered_before(T1, "b")


def test_watermark_round_trips_into_the_next_run() -> None:
    first = Frontier(None)
    first.add(T1, "a", done=True)
    first.add(T2, "b", done=True)
    first.add(T2, "c", done=True)
    first.advance()
    saved = first.watermark()
    assert saved is not None
    restored = Watermark.model_validate(saved.model_dump(mode="json", by_alias=True))

    second = Frontier(restored)
    assert second.delivered_before(T2, "b")
    assert second.delivered_before(T2, "c")
    assert not second.delivered_before(T2, "late")


def _tie_group(frontier: Frontier, at: datetime, count: int) -> None:
    for i in range(count):
        frontier.add(at, f"{at.second}-{i}", done=True)
    frontier.advance()


def test_an_oversized_tie_group_is_saved_complete_only_once_all_of_it_was_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(frontier_module, "MAX_BOUNDARY_FINGERPRINTS", 3)
    frontier = Frontier(watermark(T0, "x"))
    _tie_group(frontier, T1, 5)
    assert frontier.watermark() is None, "more rows at T1 may follow: nothing small and safe to save yet"
    assert frontier.watermark(tie_group_read=True) == Watermark(updatedAt=T1, boundaryComplete=True)
    _tie_group(frontier, T2, 5)  # moving on to T2 proves every row at T1 was read and delivered
    assert frontier.watermark() == Watermark(updatedAt=T1, boundaryComplete=True)
    pending = frontier.add(T3, "p")
    assert frontier.watermark(tie_group_read=True) == Watermark(updatedAt=T1, boundaryComplete=True)
    pending.done = True
    frontier.advance()
    assert frontier.watermark() == watermark(T3, "p")  # small again: back to fingerprints


def test_a_complete_starting_boundary_skips_every_row_at_its_time_and_stays_complete() -> None:
    start = Watermark(updatedAt=T1, boundaryComplete=True)
    frontier = Frontier(start)
    assert frontier.delivered_before(T1, "anything") and not frontier.delivered_before(T2, "anything")
    frontier.add(T1, "a", done=True)
    frontier.advance()
    assert frontier.watermark() == start, "a partial re-read must not shrink it to the rows seen"
    frontier.add(T2, "b", done=True)
    frontier.advance()
    assert frontier.watermark() == watermark(T2, "b")
