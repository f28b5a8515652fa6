"""SIGTERM in a runner pod (the Job's deadline, a node drain, a deleted pod): stop the run and say so.

Python's default action for SIGTERM ends the process at once, leaving `status.lastSync` at `Running`. Instead the
signal cancels the run's task, so that the command records the run as `Error` with a message starting
`Terminated:` (the operator turns it into `DeadlineExceeded` when the Job's deadline was the cause, see
controller/deadline.py) and releases what it holds before the grace period ends. The run checkpoints what Braze
acknowledged before it stops (runner/sync.py), so the watermark does not fall back a whole checkpoint interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

from cdi_operator.api import reasons

MESSAGE = (
    f"{reasons.TERMINATED}: the runner was stopped (SIGTERM) during the run: by the Job's deadline "
    "(spec.sync.timeoutSeconds), a node drain or a deleted pod; the next run continues from the saved watermark"
)


class Stop:
    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def cancel_on_sigterm() -> Iterator[Stop]:
    """While inside, SIGTERM cancels the current task and sets `requested`."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stop = Stop()

    def terminate() -> None:
        stop.requested = True
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here: keep the default
        yield stop
        return
    try:
        yield stop
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
