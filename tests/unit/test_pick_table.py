"""Which table a reader uses when catalog names matched case-insensitively (warehouses/base.py pick_table)."""

from __future__ import annotations

import pytest

from cdi_operator.warehouses.base import FailureReason, WarehouseError, pick_table

ROWS = [("s", "users", "id", "int"), ("S", "USERS", "id", "int"), ("S", "USERS", "updated_at", "timestamp")]


def test_the_first_preference_that_matches_wins_in_order() -> None:
    exact, upper = ("s", "users"), ("S", "USERS")
    key, columns = pick_table(ROWS, [lambda k: k == exact, lambda k: k == upper], "s.users") or ((), ())
    assert key == exact and [c.name for c in columns] == ["id"]
    key, columns = pick_table(ROWS, [lambda k: k == ("x", "y"), lambda k: k == upper], "s.users") or ((), ())
    assert key == upper and [c.name for c in columns] == ["id", "updated_at"]


def test_one_table_is_taken_whatever_its_case_and_none_without_rows() -> None:
    key, _ = pick_table(ROWS[1:], [lambda k: k == ("s", "users")], "s.users") or ((), ())
    assert key == ("S", "USERS")
    assert pick_table([], [], "s.users") is None


def test_case_variants_without_a_preferred_one_are_refused_naming_each() -> None:
    with pytest.raises(WarehouseError) as caught:
        pick_table(ROWS, [lambda k: False], "'users'")
    assert caught.value.reason is FailureReason.TABLE_MISSING
    assert "'users' matches tables that differ only in case (s.users, S.USERS)" in caught.value.message
