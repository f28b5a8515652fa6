"""Connection tests run many at once, each with its whole timeout, and never starve the operator's other threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from cdi_operator.api import reasons
from cdi_operator.controller.connection import PASSED, ConnectionTester, Outcome


def passing_after(seconds: float, running: list[int], most: list[int], lock: threading.Lock) -> Outcome:
    with lock:
        running[0] += 1
        most[0] = max(most[0], running[0])
    time.sleep(seconds)
    with lock:
        running[0] -= 1
    return Outcome(PASSED, PASSED, "reached the warehouse")


def hung_until(released: threading.Event) -> Callable[[], Outcome]:
    """A test that hangs (a warehouse that never answers) until `released` is set."""

    def test() -> Outcome:
        released.wait()
        return Outcome(PASSED, PASSED, "late")

    return test


async def test_tests_queued_behind_others_each_get_their_whole_timeout_and_at_most_at_once_run() -> None:
    # 1,000 integrations applied at once: a test that waits for a place must not spend its timeout waiting
    tester = ConnectionTester(at_once=2, timeout=1.0)
    running, most, lock = [0], [0], threading.Lock()
    outcomes = await asyncio.gather(
        *(tester.run(lambda: passing_after(0.6, running, most, lock), f"it-{i}") for i in range(6))
    )
    assert [o.reason for o in outcomes] == [PASSED] * 6
    assert most[0] == 2


async def test_a_test_over_its_timeout_is_told_and_frees_its_place() -> None:
    tester = ConnectionTester(at_once=1, timeout=0.3)
    stuck = threading.Event()
    try:
        hung = await tester.run(hung_until(stuck), "hung")
        assert hung.reason == reasons.TEST_TIMEOUT and "longer than 0.3 s" in hung.message
        after = await tester.run(lambda: Outcome(PASSED, PASSED, "reached the warehouse"), "other")
        assert after.passed
    finally:
        stuck.set()


async def test_an_object_whose_test_overran_gets_no_second_thread_until_the_first_returns() -> None:
    # a warehouse that never answers, retested every 10 minutes: one hung thread for it, not one more each time
    tester = ConnectionTester(at_once=4, timeout=0.2)
    stuck = threading.Event()
    started: list[int] = []

    def hung() -> Outcome:
        started.append(1)
        return hung_until(stuck)()

    try:
        assert (await tester.run(hung, "default/it")).reason == reasons.TEST_TIMEOUT
        again = [await tester.run(hung, "default/it") for _ in range(3)]
        assert all(o.reason == reasons.TEST_TIMEOUT and "still not returned" in o.message for o in again)
        assert len(started) == 1 and tester.overrunning() == 1
    finally:
        stuck.set()
    for _ in range(50):
        if not tester.overrunning():
            break
        await asyncio.sleep(0.05)
    assert tester.overrunning() == 0
    assert (await tester.run(lambda: Outcome(PASSED, PASSED, "reached the warehouse"), "default/it")).passed


async def test_a_test_that_crashes_fails_with_a_reason_instead_of_a_traceback() -> None:
    def crash() -> Outcome:
        raise KeyError("x")

    outcome = await ConnectionTester(at_once=1, timeout=5).run(crash, "it")
    assert outcome.reason == reasons.FailureReason.QUERY_FAILED.value and "KeyError" in outcome.message


async def test_hung_tests_leave_the_default_executor_to_the_leader_lease_renewal() -> None:
    # the leader Lease is renewed through asyncio.to_thread; warehouses that take minutes to resume must not delay it
    tester = ConnectionTester(at_once=16, timeout=30)
    stuck = threading.Event()
    tests = [asyncio.create_task(tester.run(hung_until(stuck), f"it-{i}")) for i in range(16)]
    try:
        await asyncio.sleep(0.2)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "renewed"), 5) == "renewed"
    finally:
        stuck.set()
    assert all(o.passed for o in await asyncio.gather(*tests))
