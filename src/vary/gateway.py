"""Trying a served model's targets in order: retries, a circuit breaker per target, fallback.

Decisions follow the kind of the domain error a target raised (vary/errors.py), never an HTTP status:
- refused: the request itself is wrong; it goes back to the client and no other target is tried.
- retryable: the same target is tried again (tenacity: exponential backoff with jitter, or the
  provider's Retry-After), up to its `max_attempts`, while its circuit stays closed.
- overloaded, unavailable, or an unexpected failure (an engine crash): the next target is tried.
A target whose attempts keep failing opens its circuit and is skipped until its cooldown has passed;
then one request probes it. When every target failed, a lone target's own error goes back as it is
(a local model's 429 or 503); otherwise the answer is UpstreamRateLimited or UpstreamUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from vary.breaker import CircuitBreaker
from vary.errors import Kind, UpstreamFailure, UpstreamRateLimited, UpstreamUnavailable, VaryError
from vary.request import VariationRequest
from vary.targets import Made, Target

log = logging.getLogger("vary.gateway")


@dataclass(frozen=True)
class Served:
    """Which target answered, after how many attempts in all."""

    target: str
    attempts: int


class _Tally:
    attempts = 0


def kind_of(error: BaseException) -> Kind:
    """What a failure means for the route; anything unforeseen means this target cannot serve now."""
    return error.kind if isinstance(error, VaryError) else "unavailable"


class Gateway:
    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, target: Target) -> CircuitBreaker | None:
        policy = target.resilience
        if policy.circuit_failures is None:
            return None
        if target.name not in self._breakers:
            self._breakers[target.name] = CircuitBreaker(policy.circuit_failures, policy.circuit_cooldown_seconds)
        return self._breakers[target.name]

    async def run(self, targets: Sequence[Target], request: VariationRequest) -> tuple[Made, Served]:
        """The first target's images that succeed; raises the refusal, or what every failure adds up to."""
        tally = _Tally()
        last: BaseException | None = None
        for target in targets:
            breaker = self.breaker(target)
            if breaker is not None and not breaker.allows():
                log.warning("target %s skipped: its circuit is open", target.name)
                continue
            try:
                made = await self._attempts(target, breaker, request, tally)
                return made, Served(target.name, tally.attempts)
            except Exception as exc:  # noqa: BLE001 - classified below; cancellation is not an Exception
                if kind_of(exc) == "refused":
                    raise
                last = exc
                if len(targets) > 1:
                    log.warning("target %s gave up (%s): %s", target.name, kind_of(exc), _describe(exc))
        raise _all_failed(last, targets)

    async def _attempts(
        self, target: Target, breaker: CircuitBreaker | None, request: VariationRequest, tally: _Tally
    ) -> Made:
        policy = target.resilience
        backoff = wait_exponential_jitter(
            multiplier=policy.backoff_seconds, max=policy.max_backoff_seconds, jitter=policy.backoff_seconds
        )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, UpstreamFailure) and error.retry_after is not None:
                return min(error.retry_after, policy.max_backoff_seconds)
            return float(backoff(state))

        def worth_retrying(error: BaseException) -> bool:
            return kind_of(error) == "retryable" and (breaker is None or breaker.allows())

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts),
            wait=wait,
            retry=retry_if_exception(worth_retrying),
            reraise=True,
        ):
            with attempt:
                tally.attempts += 1
                try:
                    # The whole answer within the timeout: a body that trickles in counts as a timeout.
                    made = await asyncio.wait_for(target.make(request), policy.timeout_seconds)
                except asyncio.TimeoutError:
                    raise UpstreamFailure("the target did not answer in time", retryable=True) from None
                except Exception as exc:
                    if breaker is not None and kind_of(exc) != "refused":
                        breaker.failed()
                    raise
                if breaker is not None:
                    breaker.succeeded()
                return made
        raise AssertionError("unreachable: tenacity either returns or reraises")


def _describe(error: BaseException) -> str:
    return error.message if isinstance(error, VaryError) else type(error).__name__


def _all_failed(last: BaseException | None, targets: Sequence[Target]) -> BaseException:
    if len(targets) == 1 and last is not None and not isinstance(last, UpstreamFailure):
        return last  # a lone local model's own answer: its 429, 503 or 500
    names = ", ".join(target.name for target in targets)
    if isinstance(last, UpstreamFailure) and last.rate_limited:
        return UpstreamRateLimited(names, int(last.retry_after or 1))
    return UpstreamUnavailable(names)
