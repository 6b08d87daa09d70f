"""A circuit breaker per target: closed, open for a cooldown after repeated failures, then one probe.

Written here rather than taken from pybreaker (synchronous) or aiobreaker (its own framework): the
gateway needs only these few calls, on one event loop.

States: closed (every request tries the target); open (every request skips it) for `cooldown`
seconds after `failures` attempts in a row failed; then half-open: the first request to come is
the one probe, and every other request skips the target until the probe's verdict. A probe that
succeeds closes the circuit; one that fails opens it for another cooldown; one that ends with no
verdict (the client's own fault, or the client left) lets the next request probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Closed until `failures` attempts in a row fail; then open for `cooldown` seconds; then one probe."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._failed = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if self.clock() - self._opened_at < self.cooldown else "half-open"

    @property
    def open(self) -> bool:
        return self.state == "open"

    def allows(self) -> bool:
        """Whether a request would be let in now (asking changes nothing)."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self._probing)

    def enter(self) -> Literal["closed", "probe"] | None:
        """Lets a request in: "closed", or "probe" for the one request of a half-open circuit; None skips."""
        state = self.state
        if state == "closed":
            return "closed"
        if state == "open" or self._probing:
            return None
        self._probing = True
        return "probe"

    def end_probe(self) -> None:
        """The probe ended without succeeded() or failed(): the next request may probe."""
        self._probing = False

    def succeeded(self) -> None:
        self._failed, self._opened_at, self._probing = 0, None, False

    def failed(self) -> None:
        self._failed += 1
        if self._failed >= self.failures or self._opened_at is not None:  # a failed probe reopens at once
            self._opened_at = self.clock()
            self._probing = False
