"""n images from a provider that makes only a few a call: the calls and their seeds, at most a few at once,
and what one failed call leaves, the same for every provider (Nova Canvas, fal, Replicate, BFL).

A request of n images becomes calls of at most `per_call` images each; call k sends the seed
(seed + k) mod `seeds`, where seed is the request's own (or one drawn here when it gave none), so the
seed reported to the client repeats the request exactly. When some calls fail in a way a retry may
mend and others made their images, the attempt raises PartlyMade: the gateway keeps the images made
(the provider billed them) and its next attempt asks only for the failed calls, with their own seeds.
When a call fails for good (the request refused, content moderated, a paid result that cannot be
downloaded), that error ends the attempt, and the images the other calls made are counted as unused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from vary.errors import UpstreamFailure, VaryError
from vary.request import Part, VariationRequest
from vary.targets.base import Image, Made, PartlyMade

# One call of the request: its part (images, seed) -> the part's images, PNGs or URLs handed on.
Call = Callable[[Part], Awaitable[Made]]


@dataclass(frozen=True)
class Split:
    per_call: int  # the most images the provider makes in one call
    seeds: int  # the provider takes seeds 0 to seeds - 1
    concurrency: int = 4  # calls of one request in flight at once

    def plan(self, request: VariationRequest) -> tuple[int, tuple[Part, ...]]:
        """The seed the request reports (call 0's) and its calls: the rest's own, when it is a rest."""
        if request.parts:
            return request.parts[0].seed, request.parts
        given = request.controls.seed
        seed = given % self.seeds if given is not None else secrets.randbelow(self.seeds)
        parts = tuple(
            Part(min(self.per_call, request.n - start), (seed + k) % self.seeds)
            for k, start in enumerate(range(0, request.n, self.per_call))
        )
        return seed, parts

    async def make(self, request: VariationRequest, call: Call) -> Made:
        """Every part's images in order, or PartlyMade, or the error that ends the attempt."""
        seed, parts = self.plan(request)
        slots = asyncio.Semaphore(self.concurrency)

        async def bounded(part: Part) -> Made:
            async with slots:
                return await call(part)

        results = await asyncio.gather(*(bounded(part) for part in parts), return_exceptions=True)
        made = [result for result in results if isinstance(result, Made)]
        if len(made) == len(parts):
            return _joined(made, seed)
        failed = [(part, result) for part, result in zip(parts, results, strict=True) if not isinstance(result, Made)]
        error = _deciding([result for _, result in failed])
        kept = sum(_count(result) for result in made)
        if kept and isinstance(error, UpstreamFailure) and error.kind == "retryable":
            rest = tuple(part for part, _ in failed)
            slots_left: list[Image | None] = []
            for part, result in zip(parts, results, strict=True):
                slots_left.extend(_images(result) if isinstance(result, Made) else [None] * part.images)
            remaining = dataclasses.replace(request, n=sum(part.images for part in rest), parts=rest)
            raise PartlyMade(error, slots=slots_left, rest=remaining, seed=seed)
        if isinstance(error, VaryError):
            error.unused_images += kept
        raise error


def _deciding(errors: Sequence[BaseException]) -> BaseException:
    """The failure that decides the attempt: one that is not a provider's failure (a refusal, moderation, a
    crash) first, then one that no retry mends, else the first."""
    for error in errors:
        if not isinstance(error, UpstreamFailure):
            return error
    for error in errors:
        if isinstance(error, UpstreamFailure) and error.kind != "retryable":
            return error
    return errors[0]


def _images(made: Made) -> list[Image]:
    return list(made.urls) if made.urls is not None else list(made.pngs)


def _count(made: Made) -> int:
    return len(made.urls) if made.urls is not None else len(made.pngs)


def _joined(made: Sequence[Made], seed: int) -> Made:
    if all(part.urls is not None for part in made):
        return Made(urls=[url for part in made for url in part.urls or ()], seed=seed)
    return Made(pngs=[png for part in made for png in part.pngs], seed=seed)
