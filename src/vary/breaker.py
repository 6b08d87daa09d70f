"""A circuit breaker per target: closed, open for a cooldown after repeated failures, then one probe.

Written here rather than taken from pybreaker (synchronous) or aiobreaker (its own framework): the
gateway needs only these three calls, on one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed until `failures` attempts in a row fail; then open for `cooldown` seconds; then one probe."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._failed = 0
        self._opened_at: float | None = None

    @property
    def open(self) -> bool:
        return self._opened_at is not None and self.clock() - self._opened_at < self.cooldown

    def allows(self) -> bool:
        return not self.open

    def succeeded(self) -> None:
        self._failed, self._opened_at = 0, None

    def failed(self) -> None:
        self._failed += 1
        if self._failed >= self.failures or self._opened_at is not None:  # a failed probe reopens at once
            self._opened_at = self.clock()
