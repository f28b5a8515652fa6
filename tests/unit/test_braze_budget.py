"""The workspace budget is shared: several clients of one API key, against one emulator workspace, together stay
within each endpoint family's limit minus the reserve, and another client of the workspace (a probe sending 5% of
the limit, as the customer's own backend would) never gets a 429.

Counts come from the emulator's own windows (each request is recorded with the time it was counted at); no
assertion depends on how fast the machine is. Windows are shortened to 1 s so that a test sees several of them, and
every response takes 50 ms, as Braze's do: eight runners with 32 requests in flight each hold far more than the
reserve in flight near a window's end, so a budget that only counts its own requests in flight goes past
`limit - reserve` (the pacing before the sharers estimate did, 843 of 800).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from cdi_operator.braze.budget import PACE_SLACK, Limit, SharedBudget, WorkspaceBudget
from cdi_operator.braze.client import BrazeClient, BrazeSettings
from cdi_operator.braze.emulator import BrazeEmulator

KEY = "sk-budget-test-0123456789abcdef"
LIMIT = 1000  # requests per 1 s window in these tests
RESERVE = 0.2
RUNNERS = 8
REQUESTS_PER_RUNNER = 300  # three windows' worth of budget for the eight together
LATENCY = 0.05
PROBE_PER_SECOND = LIMIT * 0.05

# family -> (emulator arguments, the runners' request, the probe's request: method, path, body)
Send = Callable[[BrazeClient, int, int], Awaitable[Any]]
FAMILIES: dict[str, tuple[dict[str, Any], Send, tuple[str, str, dict[str, Any]]]] = {
    "track": (
        {"track_rate_limit": LIMIT, "track_rate_window": 1.0},
        lambda c, r, n: c.track("attributes", [{"external_id": f"r{r}-{n}"}]),
        ("POST", "/users/track", {"attributes": [{"external_id": "probe"}, {"external_id": "probe-2"}]}),
    ),
    "delete": (
        {"delete_rate_limit": LIMIT, "delete_rate_window": 1.0},
        lambda c, r, n: c.delete("external_ids", [f"r{r}-{n}"]),
        ("POST", "/users/identify", {"aliases_to_identify": [{"external_id": "probe"}]}),
    ),
    "catalog": (
        {"catalog_rate_limit": LIMIT, "catalog_rate_window": 1.0},
        lambda c, r, n: c.catalog_put("products", [{"id": f"r{r}-{n}"}]),
        ("PUT", "/catalogs/probe/items", {"items": [{"id": "probe"}]}),
    ),
}


def is_probe(path: str, objects: int) -> bool:
    return path in ("/users/identify", "/catalogs/probe/items") or (path == "/users/track" and objects == 2)


def workspace_budget(family: str) -> WorkspaceBudget:
    one_second = Limit(LIMIT, 1.0)
    return WorkspaceBudget(**{family: one_second}, reserve=RESERVE)  # type: ignore[arg-type]


async def probe(url: str, request: tuple[str, str, dict[str, Any]], stop: asyncio.Event) -> Counter[int]:
    """The customer's other client: a steady PROBE_PER_SECOND, no pacing of its own, no retries."""
    method, path, body = request
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.request(method, url + path, json=body, headers=headers) as resp:
                statuses[resp.status] += 1

        sent = []
        while not stop.is_set():  # on its schedule, not waiting for the answers
            sent.append(asyncio.create_task(one()))
            await asyncio.sleep(1 / PROBE_PER_SECOND)
        await asyncio.gather(*sent)
    return statuses


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_runners_share_the_budget_and_leave_the_reserve(family: str) -> None:
    emulator_args, send, probe_request = FAMILIES[family]
    with BrazeEmulator(api_key=KEY, record=False, latency=LATENCY, **emulator_args) as emu:
        emu.create_catalog("products", {})
        emu.create_catalog("probe", {})
        settings = BrazeSettings(rest_endpoint=emu.url, api_key=KEY, budget=workspace_budget(family))
        stop = asyncio.Event()
        probing = asyncio.create_task(probe(emu.url, probe_request, stop))

        async def runner(r: int) -> list[Any]:
            async with BrazeClient(settings) as client:
                return await asyncio.gather(*(send(client, r, n) for n in range(REQUESTS_PER_RUNNER)))

        results = await asyncio.gather(*(runner(r) for r in range(RUNNERS)))
        stop.set()
        probe_statuses = await probing

        assert all(result.status in (201, 202) for batch in results for result in batch)
        assert probe_statuses[429] == 0 and sum(probe_statuses.values()) > 0
        records = emu.requests()
        assert not [r for r in records if r.status == 429], "nobody of the workspace was rate limited"
        runners_per_window = Counter(math.floor(r.at) for r in records if not is_probe(r.path, r.objects))
        assert sum(runners_per_window.values()) == RUNNERS * REQUESTS_PER_RUNNER
        assert max(runners_per_window.values()) <= LIMIT * (1 - RESERVE), sorted(runners_per_window.items())
        assert max(count for _, count in emu.window_counts(family, KEY)) <= LIMIT


async def test_another_workspace_has_a_budget_of_its_own() -> None:
    with BrazeEmulator(api_key=KEY, other_api_keys=["other-key"], track_rate_limit=1, track_rate_window=60) as emu:
        async with aiohttp.ClientSession() as session:
            for key in (KEY, "other-key", KEY):
                async with session.post(
                    emu.url + "/users/track",
                    json={"attributes": [{"external_id": "u"}]},
                    headers={"Authorization": f"Bearer {key}"},
                ) as resp:
                    assert resp.headers.get("X-RateLimit-Remaining") == "0"
        if len(emu.window_counts("track", KEY)) > 1:
            pytest.skip("the run straddled a minute boundary")
        assert [r.status for r in emu.requests()] == [201, 201, 429]


# --- the pacing, step by step on a given clock ----------------------------------------------------------------------


def headers(remaining: int, reset: int, limit: int = 100) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)}


def test_one_request_until_the_sharers_are_known_then_what_the_others_hold_in_flight_is_kept_from_the_headroom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("cdi_operator.braze.budget.time.monotonic", lambda: now[0])
    budget = SharedBudget(Limit(100, 10.0), reserve=0.2, share_without_headers=0.25)

    def start(*, paced: bool = True) -> bool:
        if not paced:
            budget._next = 0.0
        if budget._wait(now[0]) > 0:
            return False
        budget._count_in_flight(+1)
        return True

    assert start()
    assert not start(), "a second request waits for the first answer"
    budget.observe(headers(remaining=61, reset=5), server_now=0.0)  # 5 s left
    budget.release()
    assert budget.sharers == 1
    assert start() and budget._next == pytest.approx(now[0] - PACE_SLACK + 5 / (61 - 20)), "headroom / time left"
    assert not start(paced=False), "one at a time until two answers tell how fast the window falls"
    budget.observe(headers(remaining=55, reset=5), server_now=0.0)  # 6 fewer for one answer of ours: six runs
    budget.release()
    assert budget.sharers == 6
    assert start(paced=False) and start(paced=False), "(1 + 2 x 5) x 2 in flight <= 55 - 20"
    assert not start(paced=False), "slow start: not more in flight than answers seen"
    budget.release()
    budget.observe(headers(remaining=33, reset=5), server_now=0.0)  # 28 fewer over two answers: fourteen runs
    assert budget.sharers == 14
    assert not start(paced=False), "1 + 2 x 13 x 1 in flight > 33 - 20: the others' would spend the reserve"
    assert budget._wait(now[0]) == pytest.approx(5 + 0.05), "... so it waits for the reset"
    now[0] += 5.06  # a new window: the whole budget, over the window's length, the sharers of the last one
    budget.release()
    assert budget.sharers == 14
    assert budget._load == pytest.approx(1 - math.exp(-5.06)), "one request in flight for the last 5 s"
    assert start(paced=False), "nothing in flight, room for what the others hold: 2 x 13 x 1 < 100 - 20"
    assert budget.sharers == 14
    assert budget._next == pytest.approx(now[0] - PACE_SLACK + (10 - 0.06) / (100 - 20 - 2 * 13 * budget._load))
    budget.observe(headers(remaining=90, reset=15), server_now=5.06)  # the new window's first answer
    budget.observe(headers(remaining=88, reset=15), server_now=5.06)  # two fewer for one answer: two runs left
    assert budget.sharers == pytest.approx((14 * 4 + 2) / (4 + 1)), "the last window's weighs four answers"


def test_a_run_that_sends_little_is_not_starved_by_the_share_of_the_big_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("cdi_operator.braze.budget.time.monotonic", lambda: now[0])
    budget = SharedBudget(Limit(1000, 10.0), reserve=0.2, share_without_headers=0.25)
    for remaining in (900, 400):  # 500 fell per answer of its own: its requests are a 500th of the workspace's
        budget._count_in_flight(+1)
        now[0] += 0.05
        budget.observe(headers(remaining=remaining, reset=5, limit=1000), server_now=0.0)
        budget.release()
    assert budget.sharers == 500
    now[0] += 0.5  # nothing in flight since: its share of the requests the others hold is next to none
    assert budget._wait(now[0]) == 0, "400 - 200 reserve leaves room for one request and what the others hold"
    budget._count_in_flight(+1)
    budget._next = 0.0
    assert budget._wait(now[0]) > 0, "with one in flight it stands for 2 x 499 others' requests: no room"


def test_without_headers_a_run_paces_at_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("cdi_operator.braze.budget.time.monotonic", lambda: now[0])
    budget = SharedBudget(Limit(100, 10.0), reserve=0.2, share_without_headers=0.25)
    budget.observe({}, server_now=0.0)
    assert budget._wait(now[0]) == 0
    assert budget._next == pytest.approx(now[0] - PACE_SLACK + 10 / (80 * 0.25))


def test_a_late_event_loop_does_not_slow_the_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each look at the budget comes a millisecond after the pace allows (asyncio.sleep overshoots): the run still
    starts requests at the rate of its headroom, not at one per interval plus the lateness."""
    now = [1000.0]
    monkeypatch.setattr("cdi_operator.braze.budget.time.monotonic", lambda: now[0])
    budget = SharedBudget(Limit(3000, 3.0), reserve=0.2, share_without_headers=0.25)
    budget.observe({}, server_now=0.0)  # no headers: a fixed rate, 2,400 x 0.25 / 3 s = 200 requests/s
    started = 0
    while now[0] < 1010.0:
        wait = budget._wait(now[0])
        if wait > 0:
            now[0] += wait + 0.001
        else:
            started += 1
    assert started == pytest.approx(2000, abs=3), "200 requests/s for 10 s (a millisecond late each: 166/s)"


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="reserve"):
        WorkspaceBudget(reserve=1.0)
    with pytest.raises(ValueError, match="share_without_headers"):
        WorkspaceBudget(share_without_headers=0)
    with pytest.raises(ValueError, match="requests >= 1"):
        Limit(0, 3.0)
