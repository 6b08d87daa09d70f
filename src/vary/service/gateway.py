"""Trying a served model's targets in order: retries, a circuit breaker per target, fallback, a deadline.

Decisions follow the kind of the domain error a target raised (vary/errors.py), never an HTTP status:
- refused: the request itself is wrong; it goes back to the client and no other target is tried.
- retryable: the same target is tried again (tenacity: exponential backoff with jitter, or the
  provider's Retry-After), up to its `max_attempts`, while its circuit stays closed. An attempt that
  made part of the images (PartlyMade: some of a split request's calls failed) is retried for the rest
  only; the client still gets all n images or an error. A Retry-After
  longer than the target's `max_backoff_seconds`, or any wait past the route's deadline, is not
  waited out: the next target is tried at once.
- overloaded, unavailable (vary's own configuration of a provider included), or an unexpected
  failure (an engine crash): the next target is tried.
A provider that throttles without a Retry-After gets the client the backoff the gateway itself would
wait before its next attempt (backoff_seconds x 2^(attempts-1), capped), rounded up, never a constant.
A target whose attempts keep failing opens its circuit and is skipped until its cooldown has passed;
then one request probes it while the others skip it (breaker.py). Every attempt and wait of a
request fits in its deadline. When every target failed, a lone target's own error goes back as it
is (a local model's 429 or 503); otherwise the answer is UpstreamRateLimited or UpstreamUnavailable.
The caller's Tried record holds the targets tried and the attempts on each, whatever `run` ends with.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Literal, Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from vary.errors import (
    Busy,
    Kind,
    Overloaded,
    UpstreamFailure,
    UpstreamMisconfigured,
    UpstreamRateLimited,
    UpstreamUnavailable,
    VaryError,
)
from vary.request import VariationRequest
from vary.service.attempts import Served, Tried
from vary.service.breaker import CircuitBreaker
from vary.targets.base import Image, Made, PartlyMade, Target, filled, made_with

log = logging.getLogger("vary.gateway")
tracer = trace.get_tracer(__name__)

# What a client is told to wait when a target is at its concurrency bound: a slot frees when any call ends.
BUSY_RETRY_AFTER = 2
# How an attempt ended, for the metrics: a fixed set, so labels never come from a provider's answer.
Outcome = Literal["success", "retryable", "configuration", "refused", "overloaded", "unavailable"]


class AttemptObserver(Protocol):
    """Told of every attempt (vary.ops.metrics.Metrics is one)."""

    def observe_attempt(self, target: str, outcome: str, seconds: float) -> None: ...


def kind_of(error: BaseException) -> Kind:
    """What a failure means for the route; anything unforeseen means this target cannot serve now."""
    return error.kind if isinstance(error, VaryError) else "unavailable"


def outcome_of(error: BaseException | None) -> Outcome:
    if error is None:
        return "success"
    if isinstance(error, UpstreamMisconfigured):
        return "configuration"
    return kind_of(error)


class DeadlinePassed(UpstreamFailure):
    """The route's deadline cut an attempt short; nothing more is tried."""

    def __init__(self) -> None:
        super().__init__("the route's deadline passed")


class Gateway:
    def __init__(self, observer: AttemptObserver | None = None) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._in_flight: dict[str, int] = {}  # requests on each bounded target now (one event loop: no lock)
        self.observer = observer

    def breaker(self, target: Target) -> CircuitBreaker | None:
        policy = target.resilience
        if policy.circuit_failures is None:
            return None
        if target.name not in self._breakers:
            self._breakers[target.name] = CircuitBreaker(policy.circuit_failures, policy.circuit_cooldown_seconds)
        return self._breakers[target.name]

    def circuit_states(self) -> dict[str, str]:
        """Each target with a breaker and its state now (read at scrape time by the metrics)."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    async def run(
        self,
        targets: Sequence[Target],
        request: VariationRequest,
        *,
        deadline_seconds: float | None = None,
        tried: Tried | None = None,
    ) -> tuple[Made, Served]:
        """The first target's images that succeed; raises the refusal, or what every failure adds up to.

        `tried`, the caller's record, holds the attempts made however the run ends.
        """
        ends = None if deadline_seconds is None else time.monotonic() + deadline_seconds
        return await self._run(targets, request, ends, Tried() if tried is None else tried)

    async def _run(
        self, targets: Sequence[Target], request: VariationRequest, ends: float | None, tried: Tried
    ) -> tuple[Made, Served]:
        last: BaseException | None = None
        for target in targets:
            if ends is not None and time.monotonic() >= ends:
                log.warning("the deadline passed before target %s could be tried", target.name)
                last = last or DeadlinePassed()
                break
            if not self._take_slot(target):
                # Before the breaker: a full target says nothing of the provider's health, and is no attempt.
                log.info(
                    "target %s skipped: %d requests in flight, its max_concurrent", target.name, self._bound(target)
                )
                last = Busy(target.name, BUSY_RETRY_AFTER)
                continue
            try:
                breaker = self.breaker(target)
                entry = breaker.enter() if breaker is not None else "closed"
                if entry is None:
                    log.warning("target %s skipped: its circuit is open or being probed", target.name)
                    continue
                made = await self._attempts(target, breaker, entry == "probe", request, ends, tried)
                return made, Served(target.name, tried.total, tried)
            except Exception as exc:  # noqa: BLE001 - classified below; cancellation is not an Exception
                if kind_of(exc) == "refused":
                    raise
                last = exc
                if len(targets) > 1 or target.remote:
                    # A provider's failure is said even alone: the client's answer is generic (a refused
                    # download, a bad answer); a lone local model's own error goes back as it is.
                    log.warning("target %s gave up (%s): %s", target.name, outcome_of(exc), _describe(exc))
            finally:
                self._give_slot(target)
        raise _all_failed(last, targets)

    @staticmethod
    def _bound(target: Target) -> int | None:
        return target.resilience.max_concurrent

    def _take_slot(self, target: Target) -> bool:
        """One of the target's max_concurrent slots, for this request's attempts on it; False when none is free."""
        bound = self._bound(target)
        if bound is None:
            return True
        if self._in_flight.get(target.name, 0) >= bound:
            return False
        self._in_flight[target.name] = self._in_flight.get(target.name, 0) + 1
        return True

    def _give_slot(self, target: Target) -> None:
        if self._bound(target) is not None:
            self._in_flight[target.name] -= 1

    async def _attempts(
        self,
        target: Target,
        breaker: CircuitBreaker | None,
        probe: bool,
        request: VariationRequest,
        ends: float | None,
        tried: Tried,
    ) -> Made:
        policy = target.resilience
        backoff = wait_exponential_jitter(
            multiplier=policy.backoff_seconds, max=policy.max_backoff_seconds, jitter=policy.backoff_seconds
        )
        verdict = False  # whether this request told the breaker how the target did
        pending = request  # after a partly made attempt, only the rest
        slots: list[Image | None] | None = None  # the images made so far, None where the rest's go
        seed: int | None = None

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, UpstreamFailure) and error.retry_after is not None:
                return error.retry_after  # uncapped: stop() moves on rather than wait short
            return float(backoff(state))

        def stop(state: RetryCallState) -> bool:
            """Called after wait(): its upcoming_sleep is the wait before the next attempt."""
            if state.attempt_number >= policy.max_attempts:
                return True
            if state.upcoming_sleep > policy.max_backoff_seconds:
                log.warning("target %s asks to wait %.1fs, past its cap: moving on", target.name, state.upcoming_sleep)
                return True
            if ends is not None and time.monotonic() + state.upcoming_sleep >= ends:
                log.warning("target %s: no time left before the deadline for another attempt", target.name)
                return True
            return False

        def worth_retrying(error: BaseException) -> bool:
            return kind_of(error) == "retryable" and (breaker is None or breaker.state == "closed")

        try:
            async for attempt in AsyncRetrying(
                stop=stop, wait=wait, retry=retry_if_exception(worth_retrying), reraise=True
            ):
                with attempt:
                    tried.attempts[target.name] = tried.attempts.get(target.name, 0) + 1
                    try:
                        made = await self._attempt(target, pending, ends, tried.attempts[target.name], breaker)
                    except Exception as exc:
                        if isinstance(exc, PartlyMade):
                            slots = exc.slots if slots is None else filled(slots, exc.slots)
                            pending, seed = exc.rest, exc.seed if seed is None else seed
                        # Each failed attempt counts, but never the client's fault or the route's deadline.
                        if breaker is not None and kind_of(exc) != "refused" and not isinstance(exc, DeadlinePassed):
                            breaker.failed()
                            verdict = True
                        raise
                    if breaker is not None:
                        breaker.succeeded()
                        verdict = True
                    return made_with(slots, made, seed) if slots is not None else made
        except BaseException as exc:
            # Billed and never given: what earlier attempts kept, and what the last one made and dropped.
            tried.unused_images += _kept(slots) + (exc.unused_images if isinstance(exc, VaryError) else 0)
            if isinstance(exc, UpstreamFailure) and exc.rate_limited and exc.retry_after is None:
                # The wait the gateway itself would take before its next attempt, without the jitter.
                attempts = tried.attempts.get(target.name, 1)
                exc.retry_after = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (attempts - 1))
            raise
        finally:
            if probe and not verdict and breaker is not None:
                breaker.end_probe()
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(
        self,
        target: Target,
        request: VariationRequest,
        ends: float | None,
        number: int,
        breaker: CircuitBreaker | None,
    ) -> Made:
        """One attempt, in its own span: the target, its class of outcome, the provider's status."""
        attributes: dict[str, str | int | bool] = {
            "vary.target": target.name,
            "vary.attempt": number,
            "vary.remote": target.remote,
        }
        if breaker is not None:
            attributes["vary.circuit"] = breaker.state
        # Not recorded as an exception: the span says the class of failure, never a provider's words.
        with tracer.start_as_current_span(
            "vary.attempt", attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                made = await self._timed_attempt(target, request, ends)
            except Exception as exc:
                span.set_attribute("vary.outcome", outcome_of(exc))
                status = exc.status if isinstance(exc, UpstreamFailure) else None
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                span.set_status(Status(StatusCode.ERROR, f"{outcome_of(exc)}: {type(exc).__name__}"))
                raise
            span.set_attribute("vary.outcome", "success")
            return made

    async def _timed_attempt(self, target: Target, request: VariationRequest, ends: float | None) -> Made:
        """One attempt, within the target's timeout and the route's deadline, told to the observer."""
        policy = target.resilience
        remaining = None if ends is None else ends - time.monotonic()
        limits = [t for t in (policy.timeout_seconds, remaining) if t is not None]
        timeout = min(limits) if limits else None
        started = time.perf_counter()
        outcome: Outcome | None = None  # stays None when the client left: nothing to tell
        try:
            # The whole answer within the timeout: a body that trickles in counts as a timeout.
            made = await asyncio.wait_for(target.make(request), timeout)
            outcome = "success"
            return made
        except asyncio.TimeoutError:
            error: Exception = (
                DeadlinePassed()
                if remaining is not None and timeout == remaining
                else UpstreamFailure("the target did not answer in time", retryable=True)
            )
            outcome = outcome_of(error)
            raise error from None
        except Exception as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            if self.observer is not None and outcome is not None:
                self.observer.observe_attempt(target.name, outcome, time.perf_counter() - started)


def _kept(slots: list[Image | None] | None) -> int:
    """The images partly made attempts kept: billed, and never given when the target gives up."""
    return 0 if slots is None else sum(1 for slot in slots if slot is not None)


def _describe(error: BaseException) -> str:
    return error.message if isinstance(error, VaryError) else type(error).__name__


def _all_failed(last: BaseException | None, targets: Sequence[Target]) -> BaseException:
    if len(targets) == 1 and last is not None and not isinstance(last, UpstreamFailure):
        return last  # a lone local model's own answer: its 429, 503 or 500
    names = ", ".join(target.name for target in targets)
    if isinstance(last, UpstreamFailure) and last.rate_limited:
        return UpstreamRateLimited(names, max(1, math.ceil(last.retry_after or 1)))
    if isinstance(last, Overloaded):  # the last target full or its queue full: come back, as for a rate limit
        return UpstreamRateLimited(names, last.retry_after)
    return UpstreamUnavailable(names)
