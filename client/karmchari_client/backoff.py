"""Retry delays shared by the worker library's threads (its own module, so that
the worker, the watch and the heartbeats can all use it without importing
each other)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from the upper half
    of ``base * 2**n`` (capped), so retries never come in a tight loop and many
    workers do not retry in step. A ``Retry-After`` from the service is a floor."""

    def __init__(self, base: float = 0.5, cap: float = 30.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self._attempt = 0

    def next(self, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if retry_after:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def reset(self) -> None:
        self._attempt = 0
