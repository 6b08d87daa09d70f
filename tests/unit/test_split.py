"""The one split every provider shares (targets/hosted/split.py), with the gateway around it: calls of a few images
with a seed each, a few at once, and when some fail, only theirs asked for again, with their own seeds."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass, field

import pytest

from tests.conftest import png_bytes
from vary.controls import RequestedControls
from vary.errors import ContentFlagged, UpstreamFailure, VaryError
from vary.imaging import InputImage
from vary.request import Part, VariationRequest
from vary.service.attempts import Tried
from vary.service.gateway import Gateway
from vary.targets.base import Made, PartlyMade, Resilience, filled
from vary.targets.hosted.split import Split

FAST = Resilience(max_attempts=3, backoff_seconds=0.0, max_backoff_seconds=0.0)


def request(n: int, seed: int | None = None) -> VariationRequest:
    return VariationRequest(images=(InputImage(png_bytes(8)),), n=n, size=256, controls=RequestedControls(seed=seed))


@dataclass
class SplitTarget:
    """A target that splits as a provider does; each call answers images named by their seed and place, or the
    next error queued for its seed."""

    split: Split
    name: str = "split"
    resilience: Resilience = FAST
    remote: bool = True
    faults: dict[int, deque[BaseException]] = field(default_factory=lambda: defaultdict(deque))
    calls: list[Part] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    urls: bool = False

    async def make(self, request: VariationRequest) -> Made:
        return await self.split.make(request, self.call)

    async def call(self, part: Part) -> Made:
        self.calls.append(part)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # the calls overlap, as a provider's jobs do
            if self.faults[part.seed]:
                raise self.faults[part.seed].popleft()
            names = [f"{part.seed}-{k}" for k in range(part.images)]
            return (
                Made(urls=[f"https://cdn.example/{name}" for name in names])
                if self.urls
                else Made(pngs=[name.encode() for name in names])
            )
        finally:
            self.in_flight -= 1


def failing() -> UpstreamFailure:
    return UpstreamFailure("the provider failed (503)", status=503, retryable=True)


def test_n_becomes_calls_of_the_cap_each_seeded_seed_plus_k() -> None:
    seed, parts = Split(per_call=4, seeds=2**32).plan(request(10, seed=70))
    assert seed == 70 and parts == (Part(4, 70), Part(4, 71), Part(2, 72))
    seed, parts = Split(per_call=5, seeds=2147483647).plan(request(7, seed=2**63 - 1))
    assert parts == (Part(5, seed), Part(2, (seed + 1) % 2147483647)) and seed == (2**63 - 1) % 2147483647


def test_a_request_without_a_seed_gets_one_drawn_and_reported() -> None:
    seed, parts = Split(per_call=1, seeds=2**32).plan(request(3))
    assert 0 <= seed < 2**32 and [part.seed for part in parts] == [(seed + k) % 2**32 for k in range(3)]


def test_the_calls_of_one_request_are_at_most_concurrency_at_once() -> None:
    target = SplitTarget(Split(per_call=1, seeds=2**32, concurrency=3))
    made = asyncio.run(target.make(request(10, seed=0)))
    assert [png.decode() for png in made.pngs] == [f"{seed}-0" for seed in range(10)] and made.seed == 0
    assert target.most_in_flight == 3


def test_calls_that_fail_apart_are_asked_for_again_alone_and_their_images_go_back_in_place() -> None:
    target = SplitTarget(Split(per_call=2, seeds=2**32))
    target.faults[10].append(failing())
    target.faults[12].extend([failing(), failing()])
    tried = Tried()
    made, _ = asyncio.run(Gateway().run([target], request(7, seed=10), tried=tried))
    assert [png.decode() for png in made.pngs] == ["10-0", "10-1", "11-0", "11-1", "12-0", "12-1", "13-0"]
    assert made.seed == 10 and tried.attempts == {"split": 3} and tried.unused_images == 0
    assert [(part.seed, part.images) for part in target.calls] == [
        (10, 2), (11, 2), (12, 2), (13, 1),  # the whole request
        (10, 2), (12, 2),  # the two that failed, with their own seeds
        (12, 2),  # the one that failed again
    ]  # fmt: skip


def test_urls_handed_on_are_kept_in_place_the_same_way() -> None:
    target = SplitTarget(Split(per_call=1, seeds=2**32), urls=True)
    target.faults[1].append(failing())
    made, _ = asyncio.run(Gateway().run([target], request(3, seed=0)))
    assert made.urls == [f"https://cdn.example/{seed}-0" for seed in range(3)] and made.pngs == []


def test_a_part_that_keeps_failing_gives_nothing_and_its_paid_images_are_counted() -> None:
    target = SplitTarget(Split(per_call=4, seeds=2**32))
    target.faults[21].extend([failing()] * 3)
    tried = Tried()
    with pytest.raises(VaryError):
        asyncio.run(Gateway().run([target], request(6, seed=20), tried=tried))
    assert tried.unused_images == 4 and tried.attempts == {"split": 3}


def test_a_refusal_in_one_call_ends_the_attempt_and_the_others_images_are_counted() -> None:
    target = SplitTarget(Split(per_call=2, seeds=2**32))
    flagged = ContentFlagged("output", "the provider flagged an image")
    flagged.unused_images = 2  # the provider billed the flagged call's own images too
    target.faults[31].append(flagged)
    target.faults[30].append(failing())
    tried = Tried()
    with pytest.raises(ContentFlagged):
        asyncio.run(Gateway().run([target], request(6, seed=30), tried=tried))
    assert tried.attempts == {"split": 1} and tried.unused_images == 2 + 2  # call 32's, and the flagged call's


def test_a_failure_no_retry_mends_is_not_partly_made() -> None:
    target = SplitTarget(Split(per_call=1, seeds=2**32))
    target.faults[1].append(UpstreamFailure("a paid result could not be downloaded"))
    with pytest.raises(UpstreamFailure) as failed:
        asyncio.run(target.make(request(3, seed=0)))
    assert not isinstance(failed.value, PartlyMade) and failed.value.unused_images == 2


def test_a_rest_request_names_exactly_its_parts() -> None:
    with pytest.raises(ValueError):
        VariationRequest(images=(InputImage(png_bytes(8)),), n=3, size=256, parts=(Part(2, 5),))
    with pytest.raises(ValueError):
        filled([b"a", None], [b"b", b"c"])
    assert filled([b"a", None, None], [b"b", None]) == [b"a", b"b", None]
