"""The gateway and its circuit breaker on their own: scripted targets, a controlled clock, no server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from PIL import Image

from tests.conftest import png_bytes
from vary.api.errors import api_error
from vary.engines.diffusion import Placement
from vary.errors import (
    Busy,
    ImageRejected,
    ModelUnavailable,
    Overloaded,
    UpstreamFailure,
    UpstreamMisconfigured,
    UpstreamRateLimited,
    UpstreamRefused,
    UpstreamUnavailable,
)
from vary.imaging import InputImage
from vary.request import VariationRequest
from vary.service.attempts import Tried
from vary.service.breaker import CircuitBreaker
from vary.service.catalogue import CatalogueError, read_catalogue
from vary.service.gateway import Gateway, outcome_of
from vary.service.registry import ModelRegistry
from vary.targets.base import Made, Resilience
from vary.targets.hosted.answers import MAX_IMAGE_BYTES, pngs_of_size, retry_after
from vary.targets.hosted.openai_api import OpenAIApiProvider, UpstreamOptions

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


@pytest.fixture()
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every asyncio.sleep the gateway makes, recorded instead of slept."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    return recorded


def test_a_retry_after_longer_than_the_cap_moves_on_at_once_instead_of_waiting_short(waits: list[float]) -> None:
    busy = Scripted("busy", [UpstreamFailure("busy", status=429, retryable=True, retry_after=60.0)])
    busy.resilience = Resilience(max_attempts=3, backoff_seconds=0.0, max_backoff_seconds=20.0)
    _, served = run(Gateway(), busy, Scripted("next"))
    busy.script.append(UpstreamFailure("busy", status=429, retryable=True, retry_after=60.0))
    with pytest.raises(UpstreamRateLimited) as raised:
        run(Gateway(), busy)
    assert busy.calls == 2 and waits == [], "never retried, never waited"
    assert served.target == "next"  # type: ignore[attr-defined]
    assert api_error(raised.value).headers["Retry-After"] == "60", "the provider's own wait goes back to the client"


def test_a_retry_after_within_the_cap_is_waited_out(waits: list[float]) -> None:
    busy = Scripted("busy", [UpstreamFailure("busy", status=429, retryable=True, retry_after=0.25)])
    busy.resilience = Resilience(max_attempts=2, backoff_seconds=0.0, max_backoff_seconds=1.0)
    run(Gateway(), busy)
    assert waits == [0.25] and busy.calls == 2


class Slow(Scripted):
    """Sleeps `seconds` on each call before playing its script."""

    seconds: float = 30.0

    async def make(self, request: VariationRequest) -> Made:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return Made(pngs=[b"png"] * request.n)


def test_the_deadline_cuts_the_route_short_and_nothing_after_it_is_tried() -> None:
    slow = Slow("slow", resilience=Resilience(max_attempts=3, timeout_seconds=10.0, backoff_seconds=0.0))
    after = Scripted("after")
    tried = Tried()
    with pytest.raises(UpstreamUnavailable):
        asyncio.run(Gateway().run([slow, after], REQUEST, deadline_seconds=0.2, tried=tried))
    assert slow.calls == 1 and after.calls == 0, "the deadline is not a retryable timeout"
    assert tried.describe() == "slow:1"


def test_a_backoff_past_the_deadline_skips_the_retry_and_the_next_target_gets_the_time_left() -> None:
    flaky = Scripted("flaky", [retryable()], resilience=Resilience(max_attempts=3, backoff_seconds=30.0))
    flaky.resilience = Resilience(max_attempts=3, backoff_seconds=30.0, max_backoff_seconds=60.0)
    other = Scripted("other")
    _, served = asyncio.run(Gateway().run([flaky, other], REQUEST, deadline_seconds=5.0))
    assert flaky.calls == 1 and served.target == "other" and served.tried.describe() == "flaky:1,other:1"


def test_failed_requests_leave_the_targets_tried_and_their_attempts_in_the_callers_record() -> None:
    a, b = Scripted("a", [retryable()] * 3), Scripted("b", [UpstreamMisconfigured("no such deployment", status=404)])
    tried = Tried()
    with pytest.raises(UpstreamUnavailable):
        asyncio.run(Gateway().run([a, b], REQUEST, tried=tried))
    assert (tried.describe(), tried.total) == ("a:3,b:1", 4)
    refusing = Scripted("refusing", [UpstreamRefused("no", status=400, type=None, param=None, code=None)])
    tried = Tried()
    with pytest.raises(UpstreamRefused):
        asyncio.run(Gateway().run([Scripted("down", [retryable()] * 3), refusing], REQUEST, tried=tried))
    assert tried.describe() == "down:3,refusing:1"


def test_a_configuration_error_falls_through_without_a_retry_and_counts_toward_the_circuit() -> None:
    policy = Resilience(max_attempts=3, backoff_seconds=0.0, circuit_failures=2)
    wrong = Scripted("wrong", [UpstreamMisconfigured("DeploymentNotFound", status=404)] * 5, resilience=policy)
    good = Scripted("good")
    gateway = Gateway()
    for _ in range(3):
        _, served = run(gateway, wrong, good)
        assert served.target == "good"  # type: ignore[attr-defined]
    breaker = gateway.breaker(wrong)
    assert wrong.calls == 2 and breaker is not None and breaker.open, "two failures opened it; the third skipped"


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def observe_attempt(self, target: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append((target, outcome))


def test_every_attempt_is_observed_with_its_outcome_class() -> None:
    observer = Observer()
    gateway = Gateway(observer=observer)
    run(gateway, Scripted("a", [retryable(), UpstreamMisconfigured("bad key", status=401)]), Scripted("b"))
    with pytest.raises(UpstreamRefused):
        run(gateway, Scripted("c", [UpstreamRefused("no", status=400, type=None, param=None, code=None)]))
    run(
        gateway,
        Scripted("d", [Overloaded("d", 1)], remote=False),
        Scripted("e", [RuntimeError("crash")]),
        Scripted("f"),
    )
    assert observer.seen == [
        ("a", "retryable"),
        ("a", "configuration"),
        ("b", "success"),
        ("c", "refused"),
        ("d", "overloaded"),
        ("e", "unavailable"),
        ("f", "success"),
    ]


class Held(Scripted):
    """Holds each call until `release` is set: a probe still in flight."""

    release: asyncio.Event | None = None

    async def make(self, request: VariationRequest) -> Made:
        self.calls += 1
        assert self.release is not None
        await self.release.wait()
        return Made(pngs=[b"png"] * request.n)


def test_a_half_open_circuit_lets_exactly_one_of_eight_concurrent_requests_probe() -> None:
    now = [0.0]
    gateway = Gateway()
    policy = Resilience(max_attempts=1, circuit_failures=1, circuit_cooldown_seconds=30.0)
    held = Held("held", resilience=policy)
    fallback = Scripted("fallback")
    breaker = gateway.breaker(held)
    assert breaker is not None
    breaker.clock = lambda: now[0]
    breaker.failed()
    assert breaker.state == "open"
    now[0] = 31.0

    async def eight() -> list[str]:
        held.release = asyncio.Event()
        runs = [asyncio.create_task(gateway.run([held, fallback], REQUEST)) for _ in range(8)]
        while fallback.calls < 7:  # the seven others skip the probed target
            await asyncio.sleep(0)
        assert breaker.state == "half-open" and not breaker.allows()
        held.release.set()
        return [served.target for _, served in await asyncio.gather(*runs)]

    targets = asyncio.run(eight())
    assert held.calls == 1 and sorted(targets) == ["fallback"] * 7 + ["held"]
    assert breaker.state == "closed", "the probe succeeded"


def test_a_target_at_its_concurrency_bound_is_skipped_without_an_attempt_or_a_verdict() -> None:
    """max_concurrent requests in flight on a target: the next one is refused at once (a lone target's 429) or
    goes to the route's next target; neither counts as an attempt nor toward the circuit."""
    gateway = Gateway()
    policy = Resilience(max_attempts=1, circuit_failures=1, max_concurrent=2)
    held = Held("held", resilience=policy)
    fallback = Scripted("fallback")

    async def three() -> tuple[BaseException | None, list[str], Tried]:
        held.release = asyncio.Event()
        runs = [asyncio.create_task(gateway.run([held], REQUEST)) for _ in range(2)]
        while held.calls < 2:
            await asyncio.sleep(0)
        tried = Tried()
        try:
            await gateway.run([held], REQUEST, tried=tried)
            refused: BaseException | None = None
        except Busy as exc:
            refused = exc
        _, routed = await gateway.run([held, fallback], REQUEST)
        held.release.set()
        done = [served.target for _, served in await asyncio.gather(*runs)]
        return refused, [*done, routed.target], tried

    refused, targets, tried = asyncio.run(three())
    assert isinstance(refused, Busy) and refused.retry_after >= 1
    error = api_error(refused)
    assert (error.status, error.code, "Retry-After" in error.headers) == (429, "queue_full", True)
    assert tried.attempts == {}, "a refusal at the bound is no attempt"
    assert targets == ["held", "held", "fallback"] and held.calls == 2
    breaker = gateway.breaker(held)
    assert breaker is not None and breaker.state == "closed"
    _, served = asyncio.run(gateway.run([held], REQUEST))  # the slots were given back
    assert served.target == "held"  # type: ignore[attr-defined]


def test_when_every_target_of_a_route_is_at_its_bound_the_answer_is_a_429() -> None:
    gateway = Gateway()
    bounded = [Held(name, resilience=Resilience(max_concurrent=1)) for name in ("a", "b")]

    async def busy() -> BaseException:
        for target in bounded:
            target.release = asyncio.Event()
        runs = [asyncio.create_task(gateway.run([target], REQUEST)) for target in bounded]
        while not all(target.calls for target in bounded):
            await asyncio.sleep(0)
        try:
            await gateway.run(bounded, REQUEST)
        except Exception as exc:  # noqa: BLE001 - the test looks at what came back
            return exc
        finally:
            for target in bounded:
                assert target.release is not None
                target.release.set()
            await asyncio.gather(*runs)
        raise AssertionError("a route whose targets are all busy answered")

    error = api_error(asyncio.run(busy()))  # type: ignore[arg-type]
    assert error.status == 429 and "Retry-After" in error.headers


def test_a_probe_that_ends_without_a_verdict_lets_the_next_request_probe() -> None:
    now = [0.0]
    gateway = Gateway()
    policy = Resilience(max_attempts=1, circuit_failures=1, circuit_cooldown_seconds=30.0)
    refuses = UpstreamRefused("bad image", status=400, type=None, param="image", code=None)
    target = Scripted("t", [refuses], resilience=policy)
    breaker = gateway.breaker(target)
    assert breaker is not None
    breaker.clock = lambda: now[0]
    breaker.failed()
    now[0] = 31.0
    with pytest.raises(UpstreamRefused):
        run(gateway, target)
    assert breaker.state == "half-open" and breaker.allows(), "the client's fault is no verdict on the target"
    _, served = run(gateway, target)
    assert served.target == "t" and breaker.state == "closed"  # type: ignore[attr-defined]


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
    assert not breaker.allows() and breaker.enter() is None
    now[0] += 10.0
    assert breaker.allows(), "half open after the cooldown"
    assert breaker.enter() == "probe" and breaker.enter() is None, "one probe at a time"
    breaker.failed()
    assert breaker.state == "open", "a failed probe reopens at once"
    now[0] += 10.0
    assert breaker.enter() == "probe"
    breaker.succeeded()
    assert breaker.allows() and not breaker.open and breaker.enter() == "closed"


# --- one provider attempt's answer, classified where it is read (engines/upstream.py) ------------

KEY = 'sk-unit/KEY+with=odd"chars-0123456789'


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIApiProvider]:
    monkeypatch.setenv("VARY_UNIT_KEY", KEY)
    engine = OpenAIApiProvider(
        name="u",
        engine="openai-compatible",
        options=UpstreamOptions(api_key_env="VARY_UNIT_KEY"),
        license=None,
        description=None,
    )
    yield engine
    asyncio.run(engine.aclose())


def error_body(message: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, error_body("boom"), "retryable"),
        (429, error_body("slow down"), "retryable"),
        (401, error_body("bad key"), "configuration"),
        (403, error_body("forbidden"), "configuration"),
        (301, b"", "configuration"),
        (
            404,
            error_body("The API deployment for this resource does not exist.", "DeploymentNotFound"),
            "configuration",
        ),
        (404, error_body("The model `dall-e-9` does not exist", "model_not_found"), "configuration"),
        (404, b"Not Found", "configuration"),
        (400, error_body("unknown model", "model_not_found"), "configuration"),
        (400, error_body("Your request was rejected by the safety system."), "refused"),
        (413, error_body("too large"), "refused"),
    ],
)
def test_every_provider_status_is_classified_once(
    upstream: OpenAIApiProvider, status: int, body: bytes, expected: str
) -> None:
    assert outcome_of(upstream.error_from(status, {}, body)) == expected


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        quote(KEY, safe=""),
        re.sub("%[0-9A-F]{2}", lambda escape: escape.group().lower(), quote(KEY, safe="")),
        quote_plus(KEY),
        json.dumps(KEY)[1:-1],
        json.dumps(KEY)[1:-1].replace("/", "\\/"),
    ],
    ids=["whole", "url-encoded", "url-encoded-lower", "form-encoded", "json-escaped", "json-escaped-slash"],
)
def test_a_key_echoed_in_any_form_is_scrubbed_before_the_message_is_cut(upstream: OpenAIApiProvider, echo: str) -> None:
    for padding in (0, 180, 195):  # the echo crossing the 200-character cut included
        plain = ("x" * padding + f"key={echo} was refused").encode()
        as_json = error_body("x" * padding + f'{{"key": "{echo}"}}')
        for body in (plain, as_json):
            error = upstream.error_from(400, {}, body)
            assert isinstance(error, UpstreamRefused)
            assert all(fragment not in error.message for fragment in _fragments(KEY) | _fragments(echo))


def _base64_forms(secret: str) -> list[str]:
    """The key base64-encoded inside a longer value, at each of the three alignments, standard and URL-safe."""
    raw = secret.encode()
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\xff" * offset + raw + b"\xff" * 2).decode()
        forms += [encoded, encoded.replace("+", "-").replace("/", "_")]
    return forms


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        quote(KEY, safe=""),
        json.dumps(KEY)[1:-1],
        *_base64_forms(KEY),
        KEY.encode().hex(),
        KEY.encode().hex().upper(),
    ],
)
def test_every_field_of_a_provider_s_refusal_is_scrubbed_and_bounded(upstream: OpenAIApiProvider, echo: str) -> None:
    """type, param and code reach the client as message does: none may carry the key, in any encoding, or
    16,000 characters."""
    long = "y" * 16_000
    body = json.dumps(
        {"error": {"message": f"bad {echo}", "type": f"t-{echo}{long}", "param": f"{echo}", "code": f"{long}{echo}"}}
    ).encode()
    error = upstream.error_from(400, {}, body)
    assert isinstance(error, UpstreamRefused)
    rendered = api_error(error).body()["error"]
    for name in ("message", "type", "param", "code"):
        value = rendered[name] or ""
        assert len(value) <= 200, (name, len(value))
        assert not any(fragment in value for fragment in _fragments(KEY) | _fragments(echo, 12)), (name, value)


def _fragments(secret: str, length: int = 8) -> set[str]:
    return {secret[i : i + length] for i in range(len(secret) - length + 1)}


def test_retry_after_in_seconds_http_date_and_milliseconds() -> None:
    now = 1_800_000_000.0
    assert retry_after({"retry-after": "60"}, now) == 60.0
    assert retry_after({"retry-after": formatdate(now + 120, usegmt=True)}, now) == 120.0
    assert retry_after({"retry-after": formatdate(now - 5, usegmt=True)}, now) == 0.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "1"}, now) == 0.25
    assert retry_after({"retry-after": "soon"}, now) is None and retry_after({}, now) is None


def test_a_rate_limit_carries_the_provider_s_http_date(upstream: OpenAIApiProvider) -> None:
    error = upstream.error_from(429, {"retry-after": formatdate(time.time() + 90, usegmt=True)}, error_body("busy"))
    assert isinstance(error, UpstreamFailure) and error.retry_after is not None and 85 < error.retry_after <= 90


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels: what a decompression bomb looks like before decoding."""
    data = bytearray(png_bytes(8))
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    "answer",
    [b"not an image", png_bytes(64)[:60], bomb_png(), png_bytes((64, 32))],
    ids=["garbage", "truncated", "bomb", "not-square"],
)
def test_a_provider_image_is_checked_as_an_input_is_and_refused_as_retryable(answer: bytes) -> None:
    with pytest.raises(UpstreamFailure) as raised:
        pngs_of_size([answer], 64, True)
    assert raised.value.kind == "retryable"


def test_a_provider_image_of_the_asked_size_passes_as_it_is_and_others_are_resized() -> None:
    same, other = png_bytes(64), png_bytes(128)
    out = pngs_of_size([same, other], 64, True)
    assert out[0] is same and Image.open(io.BytesIO(out[1])).size == (64, 64)


def test_an_oversized_base64_answer_is_refused_before_it_is_decoded(upstream: OpenAIApiProvider) -> None:
    huge = "A" * (MAX_IMAGE_BYTES // 3 * 4 + 8)
    with pytest.raises(UpstreamFailure) as raised:
        asyncio.run(upstream._images([{"b64_json": huge}], 64))
    assert raised.value.kind == "retryable" and "larger than" in raised.value.message


def test_odd_retry_after_values_are_bounded_or_ignored() -> None:
    assert retry_after({"retry-after": "inf"}) is None and retry_after({"retry-after": "nan"}) is None
    assert retry_after({"retry-after": "-5"}) == 0.0 and retry_after({"retry-after": "1e12"}) == 86400.0


def test_a_route_s_deadline_comes_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "vary.toml"
    hosted = (
        '[[models]]\nname = "up"\nengine = "openai-compatible"\n[models.options]\nbase_url = "http://127.0.0.1:9"\n'
    )
    path.write_text(hosted + '[[models]]\nname = "r"\nroute = ["up"]\ndeadline_seconds = 12.5\n')
    assert [model.deadline_seconds for model in read_catalogue(path).models] == [None, 12.5]
    registry = ModelRegistry.from_catalogue(read_catalogue(path), placement=Placement())
    assert [registry.resolve(name).deadline_seconds for name in ("up", "r")] == [300.0, 12.5]
    for engine in registry.hosted:
        asyncio.run(engine.aclose())
    path.write_text(hosted.replace('"openai-compatible"', '"openai-compatible"\ndeadline_seconds = 3'))
    with pytest.raises(CatalogueError, match="deadline_seconds is for a route"):
        read_catalogue(path)
    path.write_text(hosted + '[[models]]\nname = "r"\nroute = ["up"]\ndeadline_seconds = 0\n')
    with pytest.raises(CatalogueError, match="above 0"):
        read_catalogue(path)
