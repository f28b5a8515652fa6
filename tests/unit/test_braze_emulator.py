"""The Braze emulator's contract, over real HTTP on loopback (BRAZE-API.md is the reference)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from cdi_operator.braze.emulator import BrazeEmulator

KEY = "emu-test-key"


@pytest.fixture
def emu() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=KEY) as emulator:
        yield emulator


async def post(
    emu: BrazeEmulator, path: str, body: Any, *, key: str | None = KEY, raw: bytes | None = None, wait: float = 10
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait)) as session,
        session.post(emu.url + path, data=raw if raw is not None else orjson.dumps(body), headers=headers) as resp,
    ):
        data = await resp.read()
        return resp.status, dict(resp.headers), orjson.loads(data) if data else None


def users(n: int, prefix: str = "u") -> list[dict[str, Any]]:
    return [{"external_id": f"{prefix}{i}", "i": i} for i in range(n)]


# --- auth and request shape ----------------------------------------------------------------------------------------


async def test_auth_missing_or_wrong_key_is_401_with_a_message(emu: BrazeEmulator) -> None:
    for key in (None, "wrong"):
        status, _, body = await post(emu, "/users/track", {"attributes": users(1)}, key=key)
        assert status == 401 and isinstance(body["message"], str) and body["message"]
    status, _, body = await post(emu, "/users/track", {"attributes": users(1)})
    assert status == 201 and body == {"message": "success", "attributes_processed": 1}
    assert emu.status_counts == {401: 2, 201: 1}
    assert [o["external_id"] for o in emu.tracked("attributes")] == ["u0"]


async def test_request_limit_total_per_array_and_configured() -> None:
    with BrazeEmulator(api_key=KEY) as emu:
        assert (await post(emu, "/users/track", {"attributes": users(75)}))[0] == 201
        status, _, body = await post(emu, "/users/track", {"attributes": users(40), "events": [{}] * 36})
        assert (status, body["message"]) == (400, "Max Input Length Exceeded")
        assert len(emu.tracked("attributes")) == 75  # nothing of the refused request applied
    with BrazeEmulator(api_key=KEY, limit_mode="perArray") as emu:
        event = {"external_id": "e", "name": "x", "time": "2026-01-01T00:00:00Z"}
        assert (await post(emu, "/users/track", {"attributes": users(75), "events": [event] * 75}))[0] == 201
        assert (await post(emu, "/users/track", {"attributes": users(76)}))[0] == 400
    with BrazeEmulator(api_key=KEY, track_limit=50) as emu:
        assert (await post(emu, "/users/track", {"attributes": users(50)}))[0] == 201
        assert (await post(emu, "/users/track", {"attributes": users(51)}))[0] == 400


async def test_malformed_bodies_are_400(emu: BrazeEmulator) -> None:
    assert (await post(emu, "/users/track", None, raw=b'{"attributes": ['))[0] == 400
    assert (await post(emu, "/users/track", [1, 2]))[0] == 400
    assert (await post(emu, "/users/track", {"attributes": {"external_id": "a"}}))[0] == 400
    assert (await post(emu, "/users/track", {}))[0] == 400
    assert (await post(emu, "/users/delete", None, raw=b"nope"))[0] == 400


async def test_per_object_errors_name_array_and_index_and_the_rest_is_accepted(emu: BrazeEmulator) -> None:
    time_ = "2026-11-28T10:00:00Z"
    attributes = [
        {"external_id": "ok-1", "plan": "pro"},
        {"plan": "pro"},  # no identifier
        {"external_id": "x", "braze_id": "y", "plan": "pro"},  # two identifiers
        {"user_alias": {"alias_name": "n"}, "plan": "pro"},  # half alias
        {"external_id": "x", "favorite color": "teal"},
        {"external_id": "x", "a.b": 1},
        {"external_id": "x", "$add": 1},
        {"external_id": "x", "k" * 256: 1},
        {"external_id": "x", "bio": "x" * 256},
        {"external_id": "x", "nested": {"deep": ["y" * 256]}},
        {"external_id": "ok-2", "pets": {"$add": [{"name": "rex"}]}, "born": {"$time": "2020-01-01"}},
        {"email": "ada@example.com", "phone": "+1555", "_update_existing_only": False, "plan": "pro"},
        {"external_id": "ok-3", "email": "attr@example.com"},  # email next to external_id is an attribute
        "not an object",
    ]
    events = [
        {"external_id": "e1", "name": "played", "time": time_, "properties": {"level": 3}},
        {"external_id": "e2", "time": time_},
        {"external_id": "e3", "name": "played"},
        {"external_id": "e4", "name": "played", "time": "yesterday"},
        {"external_id": "e5", "name": "played", "time": time_, "level": 3},
    ]
    purchases = [
        {"external_id": "p1", "product_id": "sku", "currency": "USD", "price": 9.5, "quantity": 2, "time": time_},
        {"external_id": "p2", "product_id": "sku", "currency": "US", "price": 1, "time": time_},
        {"external_id": "p3", "product_id": "sku", "currency": "EUR", "price": True, "time": time_},
        {"external_id": "p4", "product_id": "sku", "currency": "EUR", "price": 1, "quantity": 101, "time": time_},
        {"external_id": "p5", "currency": "EUR", "price": 1, "time": time_},
    ]
    emu.reject_external_ids = {"e1"}
    status, _, body = await post(emu, "/users/track", {"attributes": attributes, "events": events[:3]})
    assert status == 201
    status2, _, body2 = await post(emu, "/users/track", {"events": events[3:], "purchases": purchases})
    assert status2 == 201

    failed = {(e["input_array"], e["index"]) for e in body["errors"]}
    assert failed == {("attributes", i) for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13)} | {("events", i) for i in (0, 1, 2)}
    assert all(isinstance(e["type"], str) and e["type"] for e in body["errors"])
    assert (body["message"], body["attributes_processed"], body["events_processed"]) == ("success", 4, 0)
    failed2 = {(e["input_array"], e["index"]) for e in body2["errors"]}
    assert failed2 == {("events", 0), ("events", 1)} | {("purchases", i) for i in (1, 2, 3, 4)}
    assert body2["purchases_processed"] == 1
    assert [o.get("external_id", o.get("email")) for o in emu.tracked("attributes")] == [
        "ok-1",
        "ok-2",
        "ada@example.com",
        "ok-3",
    ]
    assert emu.tracked("events") == [] and [p["external_id"] for p in emu.tracked("purchases")] == ["p1"]
    profiles = emu.profiles
    assert "email:ada@example.com" in profiles and "phone:+1555" not in profiles  # email wins over phone
    assert profiles["ok-3"] == {"email": "attr@example.com"}


async def test_profiles_merge_remove_and_creation_rules(emu: BrazeEmulator) -> None:
    alias = {"alias_name": "anon", "alias_label": "web"}
    await post(emu, "/users/track", {"attributes": [{"external_id": "a", "plan": "pro", "nick": "x", "o": {"k": 1}}]})
    await post(
        emu,
        "/users/track",
        {
            "attributes": [
                {"external_id": "a", "nick": None, "o": {"j": 2}, "_merge_objects": True},
                {"user_alias": alias, "plan": "free"},  # update-only by default: no profile
                {"braze_id": "b1", "plan": "free"},  # braze_id never creates
                {"braze_id": "b2", "plan": "plus"},
            ]
        },
    )
    emu.add_profile("braze_id:b2")
    await post(emu, "/users/track", {"attributes": [{"braze_id": "b2", "plan": "plus"}]})
    await post(emu, "/users/track", {"attributes": [{"user_alias": alias, "_update_existing_only": False, "p": 1}]})
    assert emu.profiles == {
        "a": {"plan": "pro", "o": {"k": 1, "j": 2}},
        "braze_id:b2": {"plan": "plus"},
        "alias:web:anon": {"p": 1},
    }


# --- deletes -------------------------------------------------------------------------------------------------------


async def test_deletes_limit_single_type_and_effect(emu: BrazeEmulator) -> None:
    await post(emu, "/users/track", {"attributes": users(3)})
    assert (await post(emu, "/users/delete", {"external_ids": [f"x{i}" for i in range(51)]}))[0] == 400
    assert (await post(emu, "/users/delete", {"external_ids": ["u0"], "braze_ids": ["b"]}))[0] == 400
    assert (await post(emu, "/users/delete", {"user_aliases": [{"alias_name": "n"}]}))[0] == 400
    assert (await post(emu, "/users/delete", {"external_ids": []}))[0] == 400
    assert emu.deleted() == []
    status, headers, body = await post(emu, "/users/delete", {"external_ids": ["u0", "u2"]})
    assert (status, body) == (201, {"message": "success", "deleted": 2})
    assert headers["X-RateLimit-Limit"] == "20000"
    alias = {"alias_name": "n", "alias_label": "l"}
    assert (await post(emu, "/users/delete", {"user_aliases": [alias]}))[2]["deleted"] == 1
    assert (await post(emu, "/users/delete", {"external_ids": [f"y{i}" for i in range(50)]}))[0] == 201
    assert emu.deleted()[:3] == ["u0", "u2", alias]
    assert set(emu.profiles) == {"u1"}
    assert emu.counts["deleted"] == 53


# --- rate limits ---------------------------------------------------------------------------------------------------


async def test_rate_limit_headers_and_429() -> None:
    with BrazeEmulator(api_key=KEY, track_rate_limit=3, track_rate_window=60, retry_after=True) as emu:
        seen = []
        for _ in range(5):
            status, headers, _ = await post(emu, "/users/track", {"attributes": users(1)})
            seen.append((status, headers["X-RateLimit-Remaining"], int(headers["X-RateLimit-Reset"])))
            assert headers["X-RateLimit-Limit"] == "3"
        if len({reset for _, _, reset in seen}) > 1:
            pytest.skip("the run straddled a minute boundary")
        reset = seen[0][2]
        assert reset % 60 == 0 and reset > time.time() - 1
        assert [(s, r) for s, r, _ in seen] == [(201, "2"), (201, "1"), (201, "0"), (429, "0"), (429, "0")]
        status, headers, body = await post(emu, "/users/track", {"attributes": users(1)})
        assert status == 429 and body["message"] and 0 <= int(headers["Retry-After"]) <= 60
        assert len(emu.tracked("attributes")) == 3


async def test_a_request_counts_in_the_window_it_arrives_in_not_the_one_it_is_answered_in() -> None:
    """As Braze's limiter: a runner's request sent just before a reset spends the old window, and its answer says so,
    so a runner that counts its requests in flight against the window it sends them in fills every window."""
    with BrazeEmulator(api_key=KEY, track_rate_limit=10, track_rate_window=1, latency=0.6) as emu:
        await asyncio.sleep(0.7 - time.time() % 1 if time.time() % 1 < 0.7 else 1.7 - time.time() % 1)
        sent = time.time()
        status, headers, _ = await post(emu, "/users/track", {"attributes": users(1)})
        answered = time.time()
        assert status == 201 and int(answered) == int(sent) + 1, "answered in the next window"
        assert int(headers["X-RateLimit-Reset"]) == int(sent) + 1 and headers["X-RateLimit-Remaining"] == "9"
        [record] = emu.requests()
        assert sent <= record.at < sent + 0.2
        assert emu.window_counts("track", KEY) == [(float(int(sent)), 1)]


async def test_retry_after_is_off_by_default() -> None:
    with BrazeEmulator(api_key=KEY, track_rate_limit=1, track_rate_window=60) as emu:
        statuses = [await post(emu, "/users/track", {"attributes": users(1)}) for _ in range(3)]
        assert statuses[-1][0] == 429 and "Retry-After" not in statuses[-1][1]


# --- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http500", "http502", "http503", "http429"])
async def test_http_faults_apply_nothing(emu: BrazeEmulator, kind: str) -> None:
    emu.inject(kind, times=2)
    codes = [(await post(emu, "/users/track", {"attributes": users(1)}))[0] for _ in range(3)]
    assert codes == [int(kind[4:])] * 2 + [201]
    assert len(emu.tracked("attributes")) == 1


async def test_drop_closes_without_response_and_drop_after_applies(emu: BrazeEmulator) -> None:
    emu.inject("drop")
    with pytest.raises(aiohttp.ClientError):
        await post(emu, "/users/track", {"attributes": users(1, "dropped")})
    emu.inject("drop_after")
    with pytest.raises(aiohttp.ClientError):
        await post(emu, "/users/track", {"attributes": users(1, "acked-lost")})
    assert [o["external_id"] for o in emu.tracked("attributes")] == ["acked-lost0"]
    assert emu.status_counts == {0: 2}
    assert [r.fault for r in emu.requests()] == ["drop", "drop_after"]


async def test_slow_outlasts_a_client_timeout_and_still_applies(emu: BrazeEmulator) -> None:
    emu.inject("slow", delay=0.5)
    with pytest.raises(TimeoutError):
        await post(emu, "/users/track", {"attributes": users(1, "slow")}, wait=0.1)
    for _ in range(100):
        if emu.tracked("attributes"):
            break
        await asyncio.sleep(0.02)
    assert [o["external_id"] for o in emu.tracked("attributes")] == ["slow0"]


async def test_queued_is_202_and_applies(emu: BrazeEmulator) -> None:
    emu.inject("queued")
    status, _, body = await post(emu, "/users/track", {"attributes": users(2)})
    assert (status, body) == (202, {"message": "queued"})
    assert len(emu.tracked("attributes")) == 2


async def seeded_codes(seed: int) -> list[int]:
    with BrazeEmulator(api_key=KEY) as emu:
        emu.set_random_faults({"http500": 0.25, "http429": 0.25, "queued": 0.25}, seed=seed)
        return [(await post(emu, "/users/track", {"attributes": users(1)}))[0] for _ in range(24)]


async def test_random_faults_are_deterministic_when_seeded(emu: BrazeEmulator) -> None:
    first, again, other = await seeded_codes(7), await seeded_codes(7), await seeded_codes(8)
    assert first == again != other
    assert set(first) == {500, 429, 202, 201}
    with pytest.raises(ValueError):
        emu.set_random_faults({"http500": 0.7, "drop": 0.7})
    with pytest.raises(ValueError):
        emu.inject("explode")


# --- admin API and process mode ------------------------------------------------------------------------------------


async def test_admin_api(emu: BrazeEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(emu.url + "/_emulator/faults", json={"kind": "http503", "times": 2}) as resp:
            assert resp.status == 200 and (await resp.json())["pending_faults"] == ["http503", "http503"]
        async with session.post(emu.url + "/_emulator/faults", json={"reject_external_ids": ["u1"]}) as resp:
            assert resp.status == 200
        async with session.post(emu.url + "/_emulator/faults", json={"kind": "nope"}) as resp:
            assert resp.status == 400
        codes = [(await post(emu, "/users/track", {"attributes": users(2)}))[0] for _ in range(3)]
        assert codes == [503, 503, 201]
        async with session.get(emu.url + "/_emulator/state") as resp:
            state = await resp.json()
        assert state["status_counts"] == {"201": 1, "503": 2}
        assert state["counts"]["attributes"] == 1
        assert [o["external_id"] for o in state["objects"]["attributes"]] == ["u0"]
        assert state["profiles"] == {"u0": {"i": 0}}
        async with session.post(emu.url + "/_emulator/faults", json={"random": {"http500": 1.0}, "seed": 1}) as resp:
            assert resp.status == 200
        assert (await post(emu, "/users/track", {"attributes": users(1)}))[0] == 500
        async with session.post(emu.url + "/_emulator/reset") as resp:
            assert resp.status == 200
        assert (await post(emu, "/users/track", {"attributes": users(2)}))[0] == 201
        async with session.get(emu.url + "/_emulator/state?objects=0") as resp:
            state = await resp.json()
        assert state["status_counts"] == {"201": 1} and "objects" not in state and state["counts"]["attributes"] == 2


def test_record_false_keeps_counts_only() -> None:
    with BrazeEmulator(api_key=KEY, record=False) as emu:
        asyncio.run(post(emu, "/users/track", {"attributes": users(5)}))
        assert emu.tracked("attributes") == [] and emu.profiles == {}
        assert emu.counts["attributes"] == 5 and emu.status_counts == {201: 1}


def test_subprocess_prints_url_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdi_operator.braze.emulator", "--port", "0", "--api-key", "proc-key", "--no-record"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().split()[-1]
        assert url.startswith("http://127.0.0.1:")

        async def check() -> None:
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": "Bearer proc-key"}
                async with session.post(url + "/users/track", json={"attributes": users(3)}, headers=headers) as r:
                    assert r.status == 201
                async with session.get(url + "/_emulator/state") as r:
                    state = await r.json()
                    assert state["counts"]["attributes"] == 3 and "objects" not in state

        asyncio.run(check())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
