"""The faults the emulator plays on `/users/*` requests: the queued ones first, then the random mode."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

FAULT_KINDS = ("http500", "http502", "http503", "http429", "slow", "drop", "drop_after", "queued")


@dataclass(frozen=True)
class Fault:
    kind: str
    delay: float


class Faults:
    """Not locked itself (the emulator holds its lock around every use)."""

    def __init__(self, seed: int | None) -> None:
        self.queued: deque[Fault] = deque()
        self.probabilities: dict[str, float] = {}
        self._random_delay: float | None = None
        self._random = random.Random(seed)

    @staticmethod
    def check_kind(kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")

    @staticmethod
    def check_probabilities(probabilities: Mapping[str, float]) -> None:
        unknown = set(probabilities) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        if sum(probabilities.values()) > 1.0 + 1e-9 or any(p < 0 for p in probabilities.values()):
            raise ValueError("fault probabilities must be non-negative and sum to at most 1")

    def set_random(self, probabilities: Mapping[str, float], seed: int | None, delay: float | None) -> None:
        self.probabilities = {k: float(v) for k, v in sorted(probabilities.items()) if v > 0}
        self._random_delay = delay
        if seed is not None:
            self._random.seed(seed)

    def clear(self) -> None:
        self.queued.clear()
        self.probabilities = {}

    def next(self, slow_delay: float) -> Fault | None:
        """The fault for the next request, if any."""
        if self.queued:
            return self.queued.popleft()
        if self.probabilities:
            draw = self._random.random()
            for kind, probability in self.probabilities.items():
                if draw < probability:
                    return Fault(kind, slow_delay if self._random_delay is None else self._random_delay)
                draw -= probability
        return None
