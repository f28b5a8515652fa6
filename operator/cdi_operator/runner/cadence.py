"""How often a run checkpoints its watermark: an interval that grows with the run's age, up to a bound.

Each checkpoint is a status patch (one API request, and a watch event for the operator), so a fixed 1 s interval
costs one request a second per running sync: 3,600 for an hour-long run, 1,000 a second with 1,000 syncs running.
The interval is instead a share of the time the run has been going (`AGE_SHARE`), at least
`spec.sync.checkpointSeconds` and at most `MOST_SECONDS` (or checkpointSeconds, when that is longer):

    interval(age) = max(checkpointSeconds, min(age * AGE_SHARE, max(MOST_SECONDS, checkpointSeconds)))

With the defaults (1 s, a tenth, 30 s) a run checkpoints every second for its first 10 s, then every tenth of its
age, then every 30 s from 5 minutes on: 10 + ln(30)/ln(1.1) ≈ 46 checkpoints in its first 5 minutes, then 2 a
minute, at most about 160 in the hour a run may last (spec.sync.timeoutSeconds). What a crash can make a run send
again is so at most a tenth of the work done so far (and never more than 30 s of it), plus what was in flight.
A run also checkpoints at its end and when it is stopped (SIGTERM), so a whole run never depends on the interval.
What a checkpoint says does not change: it covers only rows Braze acknowledged (runner/frontier.py).
"""

from __future__ import annotations

AGE_SHARE = 0.1
MOST_SECONDS = 30.0


def checkpoint_interval(least: float, age: float) -> float:
    """Seconds until the next checkpoint of a run `age` seconds old; `least`: spec.sync.checkpointSeconds."""
    return max(least, min(age * AGE_SHARE, max(MOST_SECONDS, least)))
