"""Routing a request over an ordered list of targets: retries, a circuit breaker per target, fallback.

Per target, tenacity retries an attempt that may succeed later (connection errors, timeouts, 429,
5xx) with exponential backoff and jitter, or after the provider's Retry-After when it sends one.
A target whose attempts keep failing opens its circuit and is skipped until its cooldown has
passed; then one request probes it. When a target gives up, the next one is tried. A request the
provider refused as such (a 4xx other than 429) is not retried anywhere: it comes back to the client
as the provider said it, in OpenAI's shape. Local models take part as targets too: a full queue or a
failed load moves the request on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from vary.api.errors import ApiError
from vary.engines.upstream import UpstreamEngine, UpstreamError, UpstreamImages, UpstreamRequest

log = logging.getLogger("vary.gateway")


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


@dataclass(frozen=True)
class Served:
    """Which target answered, after how many attempts in all."""

    target: str
    attempts: int


class Gateway:
    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, target: UpstreamEngine) -> CircuitBreaker:
        name = target.info.id
        if name not in self._breakers:
            self._breakers[name] = CircuitBreaker(
                target.options.circuit_failures, target.options.circuit_cooldown_seconds
            )
        return self._breakers[name]

    async def run(
        self,
        targets: list[Any],
        request: UpstreamRequest,
        local: Callable[[Any], Awaitable[Any]],
    ) -> tuple[Any, Served]:
        """The first target's answer that succeeds: UpstreamImages from an upstream, or whatever `local` returns."""
        attempts = 0
        last: Exception | None = None
        for target in targets:
            name = target.info.id
            if not isinstance(target, UpstreamEngine):
                attempts += 1
                try:
                    return await local(target), Served(name, attempts)
                except ApiError as exc:
                    if exc.status not in (429, 500, 503):
                        raise  # the request itself is wrong; another target would say the same
                    log.warning("local target %s failed (%d); trying the next one", name, exc.status)
                    last = exc
                    continue
            breaker = self.breaker(target)
            if not breaker.allows():
                log.warning("target %s skipped: its circuit is open", name)
                continue
            try:
                images, tries = await self._attempts(target, breaker, request)
                return images, Served(name, attempts + tries)
            except UpstreamError as exc:
                attempts += exc.attempts
                if exc.client_error:
                    raise _as_client_error(exc, target) from None
                log.warning("target %s gave up: %s", name, _scrub(exc.message, target))
                last = exc
        raise _all_failed(last, targets)

    async def _attempts(
        self, target: UpstreamEngine, breaker: CircuitBreaker, request: UpstreamRequest
    ) -> tuple[UpstreamImages, int]:
        options = target.options
        backoff = wait_exponential_jitter(
            initial=options.backoff_seconds, max=options.max_backoff_seconds, jitter=options.backoff_seconds
        )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, UpstreamError) and error.retry_after is not None:
                return min(error.retry_after, options.max_backoff_seconds)
            return float(backoff(state))

        def worth_retrying(error: BaseException) -> bool:
            return isinstance(error, UpstreamError) and error.retryable and breaker.allows()

        tries = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(options.max_attempts),
                wait=wait,
                retry=retry_if_exception(worth_retrying),
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    try:
                        # The whole answer within the timeout: a body that trickles in counts as a timeout.
                        images = await asyncio.wait_for(target.create(request), options.timeout_seconds)
                    except asyncio.TimeoutError:
                        raise UpstreamError("the provider did not answer in time", retryable=True) from None
                    except UpstreamError as exc:
                        if not exc.client_error:
                            breaker.failed()
                        raise
                    breaker.succeeded()
                    return images, tries
        except UpstreamError as exc:
            exc.attempts = tries
            raise
        raise AssertionError("unreachable: tenacity either returns or reraises")


def _scrub(text: str, target: UpstreamEngine) -> str:
    secret = target.secret()
    return text.replace(secret, "[redacted]") if secret else text


def _as_client_error(error: UpstreamError, target: UpstreamEngine) -> ApiError:
    """The provider's refusal of the request, passed on in OpenAI's shape, never with vary's secret in it."""
    body = error.body or {}
    return ApiError(
        error.status or 400,
        _scrub(str(body.get("message") or error.message), target),
        type=str(body.get("type") or "invalid_request_error"),
        param=body.get("param") if isinstance(body.get("param"), str) else None,
        code=body.get("code") if isinstance(body.get("code"), str) else None,
    )


def _all_failed(last: Exception | None, targets: list[Any]) -> ApiError:
    names = ", ".join(t.info.id for t in targets)
    if isinstance(last, ApiError) and len(targets) == 1:
        return last
    if isinstance(last, UpstreamError) and last.status == 429:
        retry = str(int(last.retry_after or 1))
        return ApiError(
            429,
            f"Every target for this model is rate limited ({names}). Retry after {retry} seconds.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": retry},
        )
    return ApiError(
        502,
        f"No target could serve this model ({names}): the providers failed or did not answer.",
        type="server_error",
        code="upstream_unavailable",
    )
