"""A workspace's rate budget shared by every run that writes to it, paced on Braze's `X-RateLimit-*` headers.

Braze counts each endpoint family's requests per workspace (REST endpoint + API key) in fixed windows and tells
every client, on every response, how many are left (`X-RateLimit-Remaining`) and when the window ends
(`X-RateLimit-Reset`). Every run paces itself on those numbers, so all runs of a workspace share its budget with no
process of our own in between. One `SharedBudget` per endpoint family and client:

- A request may start while the window's headroom, `remaining - reserve - own requests still in flight`, is at
  least one, at a rate of `headroom / seconds left in the window`. Each run spends what is left evenly over the
  rest of the window, so N runs together spend faster, see `remaining` fall, and slow down: the sum stays within
  `limit - reserve` without any run knowing how many others there are. The reserve is left for the customer's own
  clients (their app backend, their CRM).
- After the reset a new window is assumed to start with the whole limit, until its first response says otherwise;
  the first request of a window waits a few milliseconds past the reset, so that a clock a little ahead does not
  spend the new window's budget in the old one.
- Before Braze has answered once, one request at a time: its answer tells where the window stands.
- Without the headers (a proxy that strips them), a run cannot see the others: it paces at `share_without_headers`
  of `limit - reserve`, and the 429 handling of the client is what keeps several such runs in bounds.
- A run that dies holds nothing: what it no longer sends is in the next window's `remaining` for the others.
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

    @property
    def limit(self) -> int:
        return self._limit

    async def acquire(self, max_wait: float) -> None:
        """Wait until a request may start; the caller must `release()` it once its response is read (or failed).
        BudgetExhausted when that is more than `max_wait` seconds away."""
        while True:
            wait = self._wait(time.monotonic())
            if wait <= 0:
                self._in_flight += 1
                return
            if wait > max_wait:
                raise BudgetExhausted(wait)
            await asyncio.sleep(min(wait, _POLL))

    def release(self) -> None:
        self._in_flight -= 1

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
        if self._remaining is None or self._assumed or at > self._reset + _SAME_RESET:
            self._remaining, self._reset, self._assumed = remaining, at, False
        elif abs(at - self._reset) <= _SAME_RESET:
            self._remaining = min(self._remaining, remaining)

    def _wait(self, now: float) -> float:
        """0 when a request may start now (and the pace is advanced), else how long to wait before looking again."""
        budget = self._limit * (1.0 - self._reserve)
        if self._blind:
            rate = max(budget * self._share / self._seconds, 1e-9)
        elif self._remaining is None:
            return 0.0 if self._in_flight == 0 else _POLL
        else:
            if now >= self._reset:
                if now < self._reset + NEW_WINDOW_GUARD:
                    return self._reset + NEW_WINDOW_GUARD - now
                ended = math.floor((now - self._reset) / self._seconds) + 1
                self._remaining, self._reset, self._assumed = self._limit, self._reset + ended * self._seconds, True
            headroom = self._remaining - math.floor(self._limit * self._reserve) - self._in_flight
            if headroom < 1:
                return self._reset + NEW_WINDOW_GUARD - now
            rate = headroom / max(self._reset - now, 1e-3)
        start = max(self._next, now)
        if start > now:
            return start - now
        self._next = now + 1.0 / rate
        return 0.0


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None
