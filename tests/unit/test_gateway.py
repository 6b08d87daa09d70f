"""The gateway and its circuit breaker on their own: scripted targets, a controlled clock, no server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.conftest import png_bytes
from vary.api.errors import api_error
from vary.breaker import CircuitBreaker
from vary.errors import (
    ImageRejected,
    ModelUnavailable,
    Overloaded,
    UpstreamFailure,
    UpstreamRateLimited,
    UpstreamRefused,
    UpstreamUnavailable,
)
from vary.gateway import Gateway
from vary.imaging import InputImage
from vary.request import VariationRequest
from vary.targets import Made, Resilience

REQUEST = VariationRequest(images=(InputImage(png_bytes(8)),), n=2, size=256)
FAST = Resilience(max_attempts=3, backoff_seconds=0.0, max_backoff_seconds=0.0)


@dataclass
class Scripted:
    """A Target that plays a script: each call raises the next error, or makes images once the script ends."""

    name: str
    script: list[BaseException] = field(default_factory=list)
    resilience: Resilience = FAST
    remote: bool = True
    calls: int = 0

    async def make(self, request: VariationRequest) -> Made:
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        return Made(pngs=[b"png"] * request.n)


def run(gateway: Gateway, *targets: Scripted) -> tuple[Made, object]:
    return asyncio.run(gateway.run(list(targets), REQUEST))


def retryable() -> UpstreamFailure:
    return UpstreamFailure("the provider failed (503)", status=503, retryable=True)


def test_the_first_target_that_answers_wins_and_attempts_are_counted() -> None:
    flaky = Scripted("flaky", [retryable(), retryable()])
    made, served = run(Gateway(), flaky)
    assert len(made.pngs) == 2 and served.target == "flaky" and served.attempts == 3  # type: ignore[attr-defined]


def test_a_retryable_target_that_keeps_failing_falls_back_to_the_next() -> None:
    broken, good = Scripted("broken", [retryable()] * 3), Scripted("good")
    _, served = run(Gateway(), broken, good)
    assert broken.calls == 3 and good.calls == 1
    assert (served.target, served.attempts) == ("good", 4)  # type: ignore[attr-defined]


def test_a_refusal_goes_back_at_once_and_no_other_target_is_tried() -> None:
    refusing = Scripted("refusing", [UpstreamRefused("bad prompt", status=400, type=None, param="image", code=None)])
    other = Scripted("other")
    with pytest.raises(UpstreamRefused):
        run(Gateway(), refusing, other)
    assert refusing.calls == 1 and other.calls == 0
    local_refusal = Scripted("local", [ImageRejected("Uploaded image must be square, but it is 2x3.")], remote=False)
    with pytest.raises(ImageRejected):
        run(Gateway(), local_refusal, Scripted("unused"))


@pytest.mark.parametrize(
    "failure",
    [Overloaded("local", 2), ModelUnavailable("local"), RuntimeError("CUDA error: an engine crash")],
    ids=["overloaded", "unavailable", "crash"],
)
def test_overloaded_unavailable_or_crashed_targets_move_on_without_a_retry(failure: BaseException) -> None:
    local, hosted = Scripted("local", [failure], remote=False), Scripted("hosted")
    _, served = run(Gateway(), local, hosted)
    assert local.calls == 1 and served.target == "hosted"  # type: ignore[attr-defined]


@pytest.mark.parametrize("failure", [Overloaded("local", 7), ModelUnavailable("local"), RuntimeError("crash")])
def test_a_lone_local_target_s_own_error_goes_back_as_it_is(failure: BaseException) -> None:
    with pytest.raises(type(failure)) as raised:
        run(Gateway(), Scripted("local", [failure], remote=False))
    assert raised.value is failure


def test_when_every_provider_rate_limits_the_answer_is_a_429_with_its_retry_after() -> None:
    limited = UpstreamFailure("rate limited", status=429, retryable=True, retry_after=0.0)
    a = Scripted("a", [limited] * 3, resilience=Resilience(max_attempts=1))
    b = Scripted("b", [UpstreamFailure("slow down", status=429, retryable=True, retry_after=3.0)])
    b.resilience = Resilience(max_attempts=1)
    with pytest.raises(UpstreamRateLimited) as raised:
        run(Gateway(), a, b)
    answer = api_error(raised.value)
    assert answer.status == 429 and answer.headers["Retry-After"] == "3"


def test_when_every_target_fails_otherwise_the_answer_is_a_502() -> None:
    with pytest.raises(UpstreamUnavailable) as raised:
        run(Gateway(), Scripted("a", [retryable()] * 3), Scripted("b", [UpstreamFailure("bad key (401)", status=401)]))
    answer = api_error(raised.value)
    assert answer.status == 502 and answer.code == "upstream_unavailable" and "a, b" in answer.message


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    waits: list[float] = []
    target = Scripted("a", [UpstreamFailure("busy", status=429, retryable=True, retry_after=60.0)])
    target.resilience = Resilience(max_attempts=2, backoff_seconds=0.0, max_backoff_seconds=0.01)
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    asyncio.sleep = recording_sleep  # type: ignore[assignment]
    try:
        run(Gateway(), target)
    finally:
        asyncio.sleep = real_sleep  # type: ignore[assignment]
    assert waits == [0.01]


def test_a_timeout_is_a_retryable_failure() -> None:
    class Slow(Scripted):
        async def make(self, request: VariationRequest) -> Made:
            self.calls += 1
            if self.calls == 1:
                await asyncio.sleep(30)
            return Made(pngs=[b"png"] * request.n)

    slow = Slow("slow", resilience=Resilience(max_attempts=2, timeout_seconds=0.05, backoff_seconds=0.0))
    _, served = run(Gateway(), slow)
    assert served.attempts == 2 and slow.calls == 2  # type: ignore[attr-defined]


def test_an_open_circuit_skips_its_target_until_the_cooldown_then_lets_one_probe_through() -> None:
    now = [0.0]
    gateway = Gateway()
    policy = Resilience(max_attempts=1, circuit_failures=2, circuit_cooldown_seconds=30.0)
    down = Scripted("down", [retryable()] * 10, resilience=policy)
    fallback = Scripted("fallback")
    breaker = gateway.breaker(down)
    assert breaker is not None
    breaker.clock = lambda: now[0]

    for _ in range(2):
        run(gateway, down, fallback)
    assert down.calls == 2 and breaker.open
    run(gateway, down, fallback)
    assert down.calls == 2, "skipped while open"
    now[0] = 31.0
    run(gateway, down, fallback)
    assert down.calls == 3 and breaker.open, "one probe, which failed, reopens the circuit"
    down.script.clear()
    now[0] = 62.0
    _, served = run(gateway, down, fallback)
    assert served.target == "down" and not breaker.open  # type: ignore[attr-defined]


def test_refusals_never_count_toward_the_circuit() -> None:
    policy = Resilience(max_attempts=1, circuit_failures=1)
    target = Scripted("t", [UpstreamRefused("no", status=400, type=None, param=None, code=None)], resilience=policy)
    gateway = Gateway()
    with pytest.raises(UpstreamRefused):
        run(gateway, target)
    breaker = gateway.breaker(target)
    assert breaker is not None and not breaker.open


def test_the_breaker_opens_after_its_failures_in_a_row_and_closes_on_success() -> None:
    now = [100.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    breaker = CircuitBreaker(failures=3, cooldown=10.0, clock=clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a success resets the count
    breaker.failed()
    breaker.failed()
    assert breaker.allows()
    breaker.failed()
    assert not breaker.allows()
    now[0] += 10.0
    assert breaker.allows(), "half open after the cooldown"
    breaker.succeeded()
    assert breaker.allows() and not breaker.open
