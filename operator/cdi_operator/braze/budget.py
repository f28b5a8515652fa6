"""A workspace's rate budget shared by every run that writes to it, paced on Braze's `X-RateLimit-*` headers.

Braze counts each endpoint family's requests per workspace (REST endpoint + API key) in fixed windows and tells
every client, on every response, how many are left (`X-RateLimit-Remaining`) and when the window ends
(`X-RateLimit-Reset`). Every run paces itself on those numbers, so all runs of a workspace share its budget with no
process of our own in between. One `SharedBudget` per endpoint family and client:

- Each run estimates how many runs like itself spend the window, `sharers`: how far `remaining` fell since the
  window's first answer, per answer of its own since (the customer's own clients count in it too). The others'
  requests are in nobody's `remaining` while they are in flight, and `remaining` is itself up to a round trip old
  when it is read (counted at the server, then the answer's way back and the event loop's lag) while the others
  went on spending; runs alike hold alike numbers in flight, so the requests not yet seen are its own in flight
  (known exactly) plus about `2 x (sharers - 1) x own requests in flight` of the others'. A request may start
  while that, counting the new one, fits in `remaining - reserve`, at a rate of `headroom / seconds left in the
  window` (headroom: what is left of `remaining - reserve` beyond it). A run alone (sharers 1) counts its own
  requests in flight, no more. A run that has had fewer requests in flight of late than it would have now (its
  average over the last second) counts the others' by that average: a run that sends little (its warehouse reads
  slowly) is a small part of the workspace's spending, its sharers are many, and counting the new request times
  them would starve it. Each run spends what is left evenly over the rest of the window, so N runs
  together spend faster, see `remaining` fall and slow down, and near the window's end each run's requests in
  flight shrink to its share of what is left: the sum stays within `limit - reserve` without any run being told
  how many others there are. The reserve is left for the customer's own clients (their app backend, their CRM).
- `sharers` of a window starts from the last window's (weighing as much as 4 answers), so a run that joins or
  leaves moves it within a window. In its first window a run sends one request at a time until two answers tell
  `sharers`, then may hold one more request in flight per answer seen (a slow start), so that N runs starting at
  once do not send N x max_in_flight requests blind into a small budget.
- After the reset a new window is assumed to start with the whole limit, until its first response says otherwise;
  the first request of a window waits a few milliseconds past the reset, so that a clock a little ahead does not
  spend the new window's budget in the old one.
- Without the headers (a proxy that strips them), a run cannot see the others: it paces at `share_without_headers`
  of `limit - reserve`, and the 429 handling of the client is what keeps several such runs in bounds.
- A run that dies holds nothing: no share is assigned. Its requests in flight are counted or not, and either way
  in the others' next answers; what it no longer sends is left in the next windows' `remaining`, and the others'
  `sharers` fall within a window, which gives them its part of the budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["BudgetExhausted", "Limit", "SharedBudget", "WorkspaceBudget"]

NEW_WINDOW_GUARD = 0.05  # seconds past the reset before a new window's first request
_POLL = 0.05  # longest sleep between two looks at the budget (a response may have changed it)
_SAME_RESET = 0.5  # resets closer than this name the same window (Braze gives them in whole seconds)
_PRIOR_ANSWERS = 4  # the previous window's sharers weigh as much as this many answers of the current one
_UNSEEN = 2.0  # the others' requests not yet seen in `remaining`: this many x (sharers - 1) x own in flight
_LOAD_SECONDS = 1.0  # time constant of the average of own requests in flight
PACE_SLACK = 0.01  # seconds of lateness the pace makes up for with requests started at once


class BudgetExhausted(Exception):
    """The window's budget is spent and its reset is further away than the caller may wait."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the budget is spent for {wait:.0f} s")
        self.wait = wait


@dataclass(frozen=True)
class Limit:
    """One endpoint family's limit: `requests` per fixed window of `seconds`."""

    requests: int
    seconds: float

    def __post_init__(self) -> None:
        if self.requests < 1 or not self.seconds > 0:
            raise ValueError(f"a rate limit needs requests >= 1 and seconds > 0, got {self.requests}/{self.seconds}")


@dataclass(frozen=True)
class WorkspaceBudget:
    """Braze's limits for one workspace (BRAZE-API.md's defaults) and the share of them runs leave to others."""

    track: Limit = field(default_factory=lambda: Limit(3000, 3.0))
    delete: Limit = field(default_factory=lambda: Limit(20_000, 60.0))  # shared with alias, identify and merge
    catalog: Limit = field(default_factory=lambda: Limit(16_000, 60.0))  # the asynchronous catalog item endpoints
    reserve: float = 0.2
    share_without_headers: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < 1:
            raise ValueError(f"reserve must be in [0, 1), got {self.reserve!r}")
        if not 0 < self.share_without_headers <= 1:
            raise ValueError(f"share_without_headers must be in (0, 1], got {self.share_without_headers!r}")


class SharedBudget:
    """The pacing of one client on one endpoint family; see the module docstring. Not thread-safe (one loop)."""

    def __init__(self, limit: Limit, reserve: float, share_without_headers: float) -> None:
        self._limit = limit.requests
        self._seconds = limit.seconds
        self._reserve = reserve
        self._share = share_without_headers
        self._remaining: int | None = None  # in the window that ends at _reset (monotonic clock)
        self._reset = 0.0
        self._assumed = False  # _remaining is our guess for a window no response has described yet
        self._blind = False  # the last response carried no rate-limit headers
        self._in_flight = 0
        self._next = 0.0  # monotonic time before which no request starts (the pace)
        self._answers = 0  # responses with the headers this client has seen (its slow start)
        self._first = 0  # the highest `remaining` seen in the current window
        self._window_answers = 0  # responses seen in the current window
        self._prior: float | None = None  # sharers measured over the previous window
        self._load = 0.0  # own requests in flight, averaged over the last seconds
        self._load_at = 0.0  # monotonic time _load was last brought up to date

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def rate(self) -> float:
        """Requests per second the workspace allows all its runs together, the reserve left out."""
        return self._limit * (1.0 - self._reserve) / self._seconds

    async def acquire(self, max_wait: float) -> None:
        """Wait until a request may start; the caller must `release()` it once its response is read (or failed).
        BudgetExhausted when that is more than `max_wait` seconds away."""
        while True:
            wait = self._wait(time.monotonic())
            if wait <= 0:
                self._count_in_flight(+1)
                return
            if wait > max_wait:
                raise BudgetExhausted(wait)
            await asyncio.sleep(min(wait, _POLL))

    def release(self) -> None:
        self._count_in_flight(-1)

    def _count_in_flight(self, change: int) -> None:
        now = time.monotonic()
        self._load, self._load_at = self._load_until(now), now
        self._in_flight += change

    def _load_until(self, now: float) -> float:
        """Own requests in flight averaged over the last seconds, as of `now` (none have started or ended since)."""
        if not self._load_at:
            return float(self._in_flight)
        return self._load + (self._in_flight - self._load) * (1.0 - math.exp((self._load_at - now) / _LOAD_SECONDS))

    def observe(self, headers: Mapping[str, str], server_now: float) -> None:
        """Take the window's state from a response's headers; `server_now` is the server's clock (epoch seconds)."""
        remaining = _int_header(headers, "X-RateLimit-Remaining")
        reset = _int_header(headers, "X-RateLimit-Reset")
        if remaining is None or reset is None:
            self._blind = True
            return
        self._blind = False
        limit = _int_header(headers, "X-RateLimit-Limit")
        if limit is not None and limit > 0:
            self._limit = limit  # Braze's own figure for this workspace wins over the configured one
        now = time.monotonic()
        at = now + (reset - server_now)
        if at <= now:
            return  # a late answer about a window that is over
        if self._remaining is None or at > self._reset + _SAME_RESET:
            self._new_window(remaining, at, assumed=False)
        elif self._assumed and abs(at - self._reset) <= _SAME_RESET:  # the first answer of a window we assumed
            self._remaining, self._reset, self._assumed, self._first = remaining, at, False, remaining
        elif abs(at - self._reset) <= _SAME_RESET:
            self._remaining = min(self._remaining, remaining)
            self._first = max(self._first, remaining)
        else:
            return
        self._answers += 1
        self._window_answers += 1

    @property
    def sharers(self) -> float:
        """How many runs like this one spend the window's budget (at least 1); see the module docstring."""
        fallen, answers = float(self._first - (self._remaining or 0)), float(max(0, self._window_answers - 1))
        if self._prior is not None:
            fallen, answers = fallen + self._prior * _PRIOR_ANSWERS, answers + _PRIOR_ANSWERS
        return max(1.0, fallen / answers) if answers > 0 else 1.0

    def _slow_start(self) -> int:
        """The most requests in flight this client may have yet: one until it knows `sharers`, then one more per
        answer."""
        return 1 if self._prior is None and self._window_answers < 2 else max(1, self._answers)

    def _new_window(self, remaining: int, reset: float, *, assumed: bool) -> None:
        if self._window_answers >= 2:
            self._prior = self.sharers
        self._remaining, self._reset, self._assumed = remaining, reset, assumed
        self._first, self._window_answers = remaining, 0

    def _wait(self, now: float) -> float:
        """0 when a request may start now (and the pace is advanced), else how long to wait before looking again."""
        budget = self._limit * (1.0 - self._reserve)
        if self._blind:
            rate = max(budget * self._share / self._seconds, 1e-9)
        elif self._remaining is None or self._in_flight >= self._slow_start():
            return 0.0 if self._in_flight == 0 else _POLL
        else:
            if now >= self._reset:
                if now < self._reset + NEW_WINDOW_GUARD:
                    return self._reset + NEW_WINDOW_GUARD - now
                ended = math.floor((now - self._reset) / self._seconds) + 1
                self._new_window(self._limit, self._reset + ended * self._seconds, assumed=True)
            # Not in `remaining` yet: our own requests in flight and what the others hold and spend meanwhile, about
            # as many as ours, this one counted, times the sharers; but a run that of late has had fewer in flight
            # (it sends little) counts those, lest the big runs' share of the window starve it.
            ours = min(self._in_flight + 1, max(self._in_flight, self._load_until(now)))
            unseen = self._in_flight + _UNSEEN * (self.sharers - 1) * ours
            headroom = self._remaining - math.floor(self._limit * self._reserve) - unseen
            if headroom < 1:  # no room for this request
                return self._reset + NEW_WINDOW_GUARD - now
            rate = headroom / max(self._reset - now, 1e-3)
        # The pace keeps what the event loop's lateness took (up to PACE_SLACK): pacing from `now` instead would
        # lose each sleep's overshoot, a millisecond or so at 800 requests/s, a fifth of a run's rate.
        start = max(self._next, now - PACE_SLACK)
        if start > now:
            return start - now
        self._next = start + 1.0 / rate
        return 0.0


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None
