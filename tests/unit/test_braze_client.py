"""The Braze client against the emulator, over real HTTP on loopback.

No assertion here depends on how fast the machine is: pacing and pauses are checked through the emulator's counts
and the order of the timestamps it recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from cdi_operator.braze.client import (
    FIRST_IN_FLIGHT,
    BrazeClient,
    BrazeError,
    BrazeSettings,
    _map_errors,
    _rate_limit_wait,
)
from cdi_operator.braze.emulator import BrazeEmulator

KEY = "sk-client-test-0123456789abcdef"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


@pytest.fixture
def emu() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=KEY) as emulator:
        yield emulator


def settings(url: str, **overrides: Any) -> BrazeSettings:
    return BrazeSettings(rest_endpoint=url, api_key=overrides.pop("api_key", KEY), **{**FAST, **overrides})


def batch(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"external_id": f"{prefix}-{i}", "i": i} for i in range(n)]


def ids(emu: BrazeEmulator) -> list[str]:
    return [o["external_id"] for o in emu.tracked("attributes")]


# --- the happy path ------------------------------------------------------------------------------------------------


async def test_track_and_delete(emu: BrazeEmulator) -> None:
    calls: list[tuple[str, str]] = []
    async with BrazeClient(settings(emu.url + "/"), on_response=lambda p, c: calls.append((p, c))) as client:
        result = await client.track("attributes", batch(75, "a"))
        assert (result.status, result.queued, result.errors, result.attempts) == (201, False, {}, 1)
        event = {"external_id": "a-0", "name": "played", "time": "2026-11-28T10:00:00Z"}
        assert (await client.track("events", [event])).status == 201
        deleted = await client.delete("user_aliases", [{"alias_name": "n", "alias_label": "l"}])
        assert deleted.status == 201
        assert (await client.delete("external_ids", [f"a-{i}" for i in range(50)])).status == 201
    assert ids(emu) == [f"a-{i}" for i in range(75)] and len(emu.tracked("events")) == 1
    assert emu.deleted()[0] == {"alias_name": "n", "alias_label": "l"}
    assert calls == [("/users/track", "201")] * 2 + [("/users/delete", "201")] * 2


async def test_oversized_batches_are_refused_before_sending(emu: BrazeEmulator) -> None:
    async with BrazeClient(settings(emu.url, max_objects_per_request=50)) as client:
        with pytest.raises(ValueError, match="max_objects_per_request"):
            await client.track("attributes", batch(51, "x"))
        with pytest.raises(ValueError, match="50"):
            await client.delete("external_ids", [str(i) for i in range(51)])
        with pytest.raises(ValueError, match="empty"):
            await client.track("events", [])
    assert emu.status_counts == {}


async def test_queued_202_is_delivered(emu: BrazeEmulator) -> None:
    emu.inject("queued")
    async with BrazeClient(settings(emu.url)) as client:
        result = await client.track("attributes", batch(3, "q"))
    assert (result.status, result.queued) == (202, True)
    assert ids(emu) == ["q-0", "q-1", "q-2"]


async def test_errors_are_mapped_to_the_index_of_the_object(emu: BrazeEmulator) -> None:
    emu.reject_external_ids = {"m-3"}
    objects = batch(5, "m")
    objects[1] = {"external_id": "m-1", "bad key": 1}
    async with BrazeClient(settings(emu.url)) as client:
        result = await client.track("attributes", objects)
    assert result.status == 201 and set(result.errors) == {1, 3}
    assert "reject" in result.errors[3] and "bad key" in result.errors[1]
    assert ids(emu) == ["m-0", "m-2", "m-4"]


def test_error_items_without_a_usable_index_go_under_minus_one() -> None:
    payload = (
        b'{"message":"success","errors":[{"type":"a","input_array":"attributes","index":0},'
        b'{"type":"b","input_array":"attributes","index":0},{"type":"c","input_array":"events","index":0},'
        b'{"type":"d"},{"type":"e","input_array":"attributes","index":9},"plain text"]}'
    )
    errors = _map_errors(payload, "attributes", 2)
    assert errors[0] == "a; b"
    assert errors[-1] == "events[0]: c; d; attributes[9]: e; plain text"
    assert _map_errors(b'{"message":"success"}', "attributes", 2) == {}
    assert _map_errors(b'not json with "errors"', "attributes", 2) == {}


# --- concurrency and pacing ----------------------------------------------------------------------------------------


async def test_requests_run_concurrently_up_to_max_in_flight(emu: BrazeEmulator) -> None:
    emu.inject("slow", times=12, delay=0.15)
    async with BrazeClient(settings(emu.url, max_in_flight=4)) as client:
        results = await asyncio.gather(*(client.track("attributes", batch(2, f"c{n}")) for n in range(12)))
    assert all(r.status == 201 for r in results)
    assert emu.peak_in_flight == 4
    assert len(ids(emu)) == 24


async def test_requests_in_flight_follow_the_measured_latency(emu: BrazeEmulator) -> None:
    # Little's law: 20 requests a second at 0.2 s or more a response need 4 or more in flight (6 with the slack
    # and one more); until the first response, max_in_flight.
    emu.inject("slow", times=30, delay=0.2)
    async with BrazeClient(settings(emu.url, requests_per_second=20, max_in_flight=32)) as client:
        assert client.in_flight_limit == 32
        await asyncio.gather(*(client.track("attributes", batch(1, f"l{n}")) for n in range(30)))
        assert 6 <= client.in_flight_limit < 32
        emu.reset()
        emu.inject("slow", times=10, delay=0.2)
        await asyncio.gather(*(client.track("attributes", batch(1, f"m{n}")) for n in range(10)))
        assert emu.peak_in_flight <= client.in_flight_limit
    assert len(ids(emu)) == 10


async def test_at_a_slow_braze_the_window_grows_past_what_a_run_sends_blind() -> None:
    # 400 requests/s at 0.25 s a response need 126 in flight (Little's law, with the slack and one more): more than
    # the 64 a run sends before its first response, within maxInFlight.
    with BrazeEmulator(api_key=KEY, latency=0.25) as emu:
        async with BrazeClient(settings(emu.url, requests_per_second=400, max_in_flight=256)) as client:
            assert client.in_flight_limit == FIRST_IN_FLIGHT == 64
            await asyncio.gather(*(client.track("attributes", batch(1, f"w{n}")) for n in range(64)))
            assert 126 <= client.in_flight_limit <= 256
            await asyncio.gather(*(client.track("attributes", batch(1, f"x{n}")) for n in range(300)))
            assert FIRST_IN_FLIGHT < emu.peak_in_flight <= 256
        assert len(ids(emu)) == 364


async def test_objects_given_as_json_are_sent_as_they_are(emu: BrazeEmulator) -> None:
    async with BrazeClient(settings(emu.url)) as client:
        await client.track("attributes", [b'{"external_id":"j-1","plan":"pro"}', {"external_id": "j-2"}])
    assert sorted(ids(emu)) == ["j-1", "j-2"]


async def test_rate_budget_is_respected() -> None:
    # 10 per aligned second allowed; the client at 5/s with a burst of 2 can put at most 7 into any second.
    with BrazeEmulator(api_key=KEY, track_rate_limit=10, track_rate_window=1) as emu:
        async with BrazeClient(settings(emu.url, requests_per_second=5, max_in_flight=2)) as client:
            await asyncio.gather(*(client.track("attributes", batch(1, f"r{n}")) for n in range(9)))
        assert emu.status_counts == {201: 9}
        # The same load without the budget runs into the limit; the client then waits and still delivers it all.
        emu.reset()
        async with BrazeClient(settings(emu.url, max_in_flight=8)) as client:
            await asyncio.gather(*(client.track("attributes", batch(1, f"s{n}")) for n in range(15)))
        assert emu.status_counts[201] == 15 and len(ids(emu)) == 15


async def test_429_pauses_every_request_until_the_reset_then_succeeds() -> None:
    with BrazeEmulator(api_key=KEY, track_rate_window=1) as emu:
        emu.inject("http429")
        codes: list[str] = []
        limited = asyncio.Event()

        def hook(path: str, code: str) -> None:
            codes.append(code)
            if code == "429":
                limited.set()

        async with BrazeClient(settings(emu.url, max_attempts=1), on_response=hook) as client:
            first = asyncio.create_task(client.track("attributes", batch(1, "p")))
            await limited.wait()
            # Started while the gate is closed: they wait for the reset too.
            others = await asyncio.gather(*(client.track("attributes", batch(1, f"g{n}")) for n in range(4)))
            assert (await first).attempts == 2  # the 429 did not use up max_attempts=1
        assert all(r.attempts == 1 for r in others)
        assert codes == ["429"] + ["201"] * 5
        rejected, *delivered = emu.requests()
        reset = int(rejected.at) + 1  # the 1 s window ends on the next whole second
        assert rejected.status == 429 and all(r.status == 201 and r.at >= reset - 0.01 for r in delivered)


async def test_remaining_zero_pauses_before_a_429() -> None:
    with BrazeEmulator(api_key=KEY, track_rate_limit=2, track_rate_window=1) as emu:
        async with BrazeClient(settings(emu.url, max_in_flight=1)) as client:
            for n in range(5):
                await client.track("attributes", batch(1, f"z{n}"))
        assert emu.status_counts == {201: 5}
        records = emu.requests()
        assert all(int(a.at) != int(b.at) for a, b in zip(records[1::2], records[2::2], strict=False))


async def test_a_longer_rate_limit_wait_than_allowed_fails_the_sync() -> None:
    with BrazeEmulator(api_key=KEY, track_rate_limit=1, track_rate_window=60) as emu:
        async with BrazeClient(settings(emu.url, max_rate_limit_wait=0.5)) as client:
            with pytest.raises(BrazeError) as caught:
                for n in range(3):
                    await client.track("attributes", batch(1, f"w{n}"))
        assert caught.value.reason == "RateLimitWaitExceeded" and caught.value.status == 429
        assert "requestsPerSecond" in str(caught.value)


def test_retry_after_wins_over_reset_and_takes_dates() -> None:
    now = time.time()
    both = CIMultiDict({"retry-after": "2", "x-ratelimit-reset": str(int(now) + 50)})
    assert _rate_limit_wait(both) == 2.0
    reset_only = CIMultiDict({"X-RateLimit-Reset": str(int(now) + 10)})
    wait = _rate_limit_wait(reset_only)
    assert wait is not None and 8 < wait <= 10
    dated = CIMultiDict({"Retry-After": formatdate(now + 30, usegmt=True)})
    wait = _rate_limit_wait(dated)
    assert wait is not None and 28 < wait <= 30
    assert _rate_limit_wait(CIMultiDict()) is None
    # A local clock 10 minutes behind the server's: the wait is taken from the server's Date.
    skewed = CIMultiDict({"X-RateLimit-Reset": str(int(now) + 600 + 3), "Date": formatdate(now + 600, usegmt=True)})
    wait = _rate_limit_wait(skewed)
    assert wait is not None and 1 < wait <= 4


# --- retries -------------------------------------------------------------------------------------------------------


async def test_5xx_drops_and_timeouts_are_retried_and_nothing_is_lost(emu: BrazeEmulator) -> None:
    for kind in ("http500", "drop", "http503", "drop_after", "http502"):
        emu.inject(kind)
    emu.inject("slow", delay=0.6)
    codes: list[str] = []
    client_settings = settings(emu.url, max_in_flight=4, request_timeout=0.3)
    async with BrazeClient(client_settings, on_response=lambda p, c: codes.append(c)) as client:
        results = await asyncio.gather(*(client.track("attributes", batch(3, f"f{n}")) for n in range(20)))
    assert all(r.status == 201 for r in results) and sum(r.attempts for r in results) == 26
    assert set(ids(emu)) == {f"f{n}-{i}" for n in range(20) for i in range(3)}
    assert sorted(set(codes)) == ["201", "500", "502", "503", "connection_error", "timeout"]


async def test_random_faults_lose_nothing() -> None:
    with BrazeEmulator(api_key=KEY, track_rate_window=1) as emu:
        emu.set_random_faults({"http500": 0.1, "http429": 0.05, "drop": 0.1, "drop_after": 0.05}, seed=5)
        async with BrazeClient(settings(emu.url, max_attempts=20)) as client:
            await asyncio.gather(*(client.track("attributes", batch(5, f"rf{n}")) for n in range(40)))
        assert set(ids(emu)) == {f"rf{n}-{i}" for n in range(40) for i in range(5)}
        assert sum(emu.status_counts.get(code, 0) for code in (0, 429, 500)) > 0


async def test_retries_exhausted(emu: BrazeEmulator) -> None:
    emu.inject("http503", times=3)
    async with BrazeClient(settings(emu.url, max_attempts=3)) as client:
        with pytest.raises(BrazeError) as caught:
            await client.track("attributes", batch(1, "x"))
    assert caught.value.reason == "RetriesExhausted" and caught.value.status == 503 and "503" in str(caught.value)
    assert emu.status_counts == {503: 3}


async def test_unreachable_endpoint_exhausts_retries() -> None:
    codes: list[str] = []
    async with BrazeClient(
        settings("http://127.0.0.1:9", max_attempts=2), on_response=lambda p, c: codes.append(c)
    ) as c:
        with pytest.raises(BrazeError) as caught:
            await c.delete("braze_ids", ["b"])
    assert caught.value.reason == "RetriesExhausted" and codes == ["connection_error"] * 2


# --- failures that need a human ------------------------------------------------------------------------------------


def assert_no_key(exc: BaseException, *others: object) -> None:
    for text in (str(exc), repr(exc), *map(repr, others), *map(str, others)):
        assert KEY not in text


async def test_401_raises_without_the_key(emu: BrazeEmulator) -> None:
    wrong = settings(emu.url, api_key=KEY + "-wrong")
    async with BrazeClient(wrong) as client:
        with pytest.raises(BrazeError) as caught:
            await client.track("attributes", batch(1, "k"))
        assert_no_key(caught.value, wrong, client)
    assert caught.value.reason == "Unauthorized" and caught.value.status == 401
    assert "401" in str(caught.value) and "API key" in str(caught.value)
    assert emu.status_counts == {401: 1}  # not retried


async def test_400_raises_bad_request_with_brazes_message() -> None:
    with BrazeEmulator(api_key=KEY, track_limit=50) as emu:
        async with BrazeClient(settings(emu.url)) as client:
            with pytest.raises(BrazeError) as caught:
                await client.track("attributes", batch(60, "b"))
        assert caught.value.reason == "BadRequest" and caught.value.status == 400
        assert "Max Input Length Exceeded" in str(caught.value)
        assert emu.status_counts == {400: 1}


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """A server that answers 403 quoting the Authorization header, and 404 elsewhere."""

    async def forbidden(request: web.Request) -> web.Response:
        return web.json_response({"message": f"{request.headers['Authorization']} lacks users.track"}, status=403)

    app = web.Application()
    app.router.add_post("/users/track", forbidden)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_403_and_404_are_not_retried_and_never_quote_the_key(echo_server: str) -> None:
    codes: list[str] = []
    async with BrazeClient(settings(echo_server), on_response=lambda p, c: codes.append(c)) as client:
        with pytest.raises(BrazeError) as forbidden:
            await client.track("attributes", batch(1, "x"))
        with pytest.raises(BrazeError) as missing:
            await client.delete("external_ids", ["x"])
    assert (forbidden.value.reason, forbidden.value.status) == ("Forbidden", 403)
    assert "lacks users.track" in str(forbidden.value) and "***" in str(forbidden.value)
    assert (missing.value.reason, missing.value.status) == ("NotFound", 404)
    assert "restEndpoint" in str(missing.value)
    assert_no_key(forbidden.value)
    assert codes == ["403", "404"]


def test_settings_validate_and_hide_the_key() -> None:
    s = BrazeSettings(rest_endpoint="https://rest.iad-01.braze.com", api_key=KEY)
    assert KEY not in repr(s) and s.max_objects_per_request == 75 and s.requests_per_second == 1000.0
    with pytest.raises(ValueError):
        BrazeSettings(rest_endpoint="rest.iad-01.braze.com", api_key=KEY)
    with pytest.raises(ValueError):
        BrazeSettings(rest_endpoint="https://x", api_key=KEY, max_in_flight=0)
