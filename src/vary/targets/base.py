"""The one seam every way of making images goes through: a Target makes n images for a request.

A local model (its scheduler and engine), a hosted provider, and a remote replica are all Targets.
A served model is a list of them, tried in order by the gateway (gateway.py), which reads only a
target's `resilience` and the kind of the domain error it raised (vary/errors.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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


# One image as a target hands it back: a PNG, or a URL handed on as a provider gave it (rehost_urls = false).
Image = bytes | str


class PartlyMade(UpstreamFailure):
    """An attempt that made (and was billed for) some of the images but not all: the gateway keeps them and
    its next attempt on the same target asks only for `rest`. The client still gets all n or none.

    `slots` holds the request's images in their order: each one made, and None where `rest`'s images go
    (in the order `rest` makes them). A cause that is not retryable ends the target's attempts: what was
    made is then counted as billed but never given (the usage row's `unused_images`)."""

    def __init__(
        self,
        cause: UpstreamFailure,
        *,
        slots: Sequence[Image | None],
        rest: VariationRequest,
        seed: int | None = None,
    ) -> None:
        super().__init__(cause.message, status=cause.status, retryable=cause.kind == "retryable")
        self.retry_after = cause.retry_after
        self.unused_images = cause.unused_images
        self.slots = list(slots)
        self.rest = rest
        self.seed = seed  # the whole request's, reported once the rest is made

    @property
    def made(self) -> int:
        return sum(1 for slot in self.slots if slot is not None)


def filled(slots: Sequence[Image | None], images: Sequence[Image | None]) -> list[Image | None]:
    """`slots` with its empty places taken by `images`, in order (a later attempt's, partly made or whole)."""
    if len(images) != sum(1 for slot in slots if slot is None):
        raise ValueError("the images do not fill the empty slots exactly")
    given = iter(images)
    return [slot if slot is not None else next(given) for slot in slots]


def made_with(slots: Sequence[Image | None], made: Made, seed: int | None) -> Made:
    """A later attempt's images put in the places its earlier, partly made attempts left empty."""
    images = filled(slots, made.urls if made.urls is not None else made.pngs)
    if all(isinstance(image, str) for image in images):
        return dataclasses.replace(made, pngs=[], urls=[image for image in images if isinstance(image, str)], seed=seed)
    if not all(isinstance(image, bytes) for image in images):
        raise ValueError("a request's images are all PNGs or all URLs")
    return dataclasses.replace(made, pngs=[image for image in images if isinstance(image, bytes)], seed=seed)


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
