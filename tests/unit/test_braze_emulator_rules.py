"""The emulator's cache of valid attribute keys: it never accepts what the rules refuse, and it stays bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cdi_operator.braze.emulator import rules


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    saved = set(rules._valid_keys)
    rules._valid_keys.clear()
    rules._valid_keys.update(rules._SEED_KEYS)
    yield
    rules._valid_keys.clear()
    rules._valid_keys.update(saved)


def test_an_invalid_key_is_refused_after_valid_keys_were_cached() -> None:
    assert rules.attributes_error({"external_id": "u", "plan": "pro", "city": "Berlin"}, "external_id") is None
    assert {"plan", "city"} <= rules._valid_keys
    bad = {"external_id": "u", "plan": "pro", "a b": 1, "city": "Berlin"}
    assert rules.attributes_error(bad, "external_id") == "Invalid key 'a b': keys cannot contain spaces, '.' or '$'"
    assert "a b" not in rules._valid_keys
    # An operator key is valid nested, never at the top level: accepting it nested does not cache it.
    assert rules.attributes_error({"external_id": "u", "tags": {"$add": ["x"]}}, "external_id") is None
    assert rules.attributes_error({"external_id": "u", "$add": ["x"]}, "external_id") == (
        "Invalid key '$add': keys cannot contain spaces, '.' or '$'"
    )


def test_cached_keys_still_have_their_values_and_flags_checked() -> None:
    assert rules.attributes_error({"external_id": "u", "plan": "pro"}, "external_id") is None
    long = "x" * (rules.MAX_LENGTH + 1)
    assert rules.attributes_error({"external_id": "u", "plan": long}, "external_id") == (
        f"String value is longer than {rules.MAX_LENGTH} characters"
    )
    assert rules.attributes_error({"external_id": "u", "plan": {"a.b": 1}}, "external_id") == (
        "Invalid key 'a.b': keys cannot contain spaces, '.' or '$'"
    )
    # A flag is checked as a flag, not as an attribute value; an identifier is not an attribute.
    assert rules.attributes_error({"external_id": "u", "_merge_objects": long}, "external_id") == (
        "'_merge_objects' must be a boolean"
    )
    assert rules.attributes_error({"email": long, "plan": "pro"}, "email") is None
    many = {f"k{i}": 1 for i in range(rules.MAX_ATTRIBUTES + 1)}
    assert rules.attributes_error({"external_id": "u", **many}, "external_id") == (
        f"More than {rules.MAX_ATTRIBUTES} attributes in one object"
    )


def test_with_both_flags_wrong_the_error_names_the_same_one_whatever_the_hash_seed() -> None:
    check = (
        "from cdi_operator.braze.emulator import rules; "
        "print(rules.attributes_error({'external_id': 'u', '_merge_objects': 1, '_update_existing_only': 1}, "
        "'external_id'))"
    )
    answers = {
        subprocess.run(
            [sys.executable, "-c", check], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout.strip()
        for seed in ("1", "2", "3", "4")
    }
    assert answers == {"'_update_existing_only' must be a boolean"}


def test_the_cache_cannot_grow_without_bound() -> None:
    for i in range(rules.VALID_KEYS_LIMIT * 3):
        assert rules.attributes_error({"external_id": "u", f"key_{i}": i}, "external_id") is None
        assert len(rules._valid_keys) <= rules.VALID_KEYS_LIMIT
    assert rules._SEED_KEYS.issubset(rules._valid_keys)
    assert rules.attributes_error({"external_id": "u", "a.b": 1}, "external_id") is not None
