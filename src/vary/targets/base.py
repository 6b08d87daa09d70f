"""The one seam every way of making images goes through: a Target makes n images for a request.

A local model (its scheduler and engine), a hosted provider, and a remote replica are all Targets.
A served model is a list of them, tried in order by the gateway (gateway.py), which reads only a
target's `resilience` and the kind of the domain error it raised (vary/errors.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vary.errors import UpstreamFailure
from vary.request import VariationRequest


@dataclass(frozen=True)
class Resilience:
    """How the gateway treats a target: attempts, their timeout and backoff, and its circuit breaker."""

    max_attempts: int = 1
    timeout_seconds: float | None = None  # one attempt, the whole answer included; None: no limit
    backoff_seconds: float = 0.5  # the first retry's wait; it doubles, with jitter
    max_backoff_seconds: float = 20.0  # also caps a Retry-After
    circuit_failures: int | None = None  # failed attempts in a row that open the circuit; None: no breaker
    circuit_cooldown_seconds: float = 30.0
    # Requests in flight on the target at once; the next is refused at once (or goes to a route's next target).
    # None: no bound (a local model has its own queue).
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Made:
    """A target's images: PNGs of exactly the asked size, or URLs handed on as a provider gave them."""

    pngs: list[bytes] = field(default_factory=list)
    urls: list[str] | None = None
    seed: int | None = None  # the seed used, when the target draws one
    batch_images: int = 0  # images in the pipeline call the request shared (0: not batched here)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, for Server-Timing


class PartlyMade(UpstreamFailure):
    """An attempt that made (and was billed for) some of the images but not all: the gateway keeps `made`
    and its next attempt on the same target asks only for `rest`. The client still gets all n or none."""

    def __init__(
        self,
        cause: UpstreamFailure,
        *,
        before: list[bytes],
        after: list[bytes],
        rest: VariationRequest,
        seed: int | None = None,
    ) -> None:
        super().__init__(cause.message, status=cause.status, retryable=cause.kind == "retryable")
        self.retry_after = cause.retry_after
        self.before, self.after = before, after  # the images made, in the order they go around the rest's
        self.rest = rest
        self.seed = seed  # the whole request's, reported once the rest is made

    @property
    def made(self) -> int:
        return len(self.before) + len(self.after)


class Target(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def resilience(self) -> Resilience: ...

    @property
    def remote(self) -> bool:
        """True when a call costs elsewhere (a provider bills it): the input is checked before it is called."""
        ...

    async def make(self, request: VariationRequest) -> Made:
        """The request's n images; raises domain errors, and is cancelled when the client leaves."""
        ...
