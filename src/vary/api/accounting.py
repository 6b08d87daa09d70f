"""What one variation request leaves behind, recorded in one place whatever its outcome.

The usage row, the request metrics, the access-log fields and the rate-limit headers are all
written here, around the route's work, so the route itself stays a few lines. Statuses tell the
truth: the client's faults are 4xx, a client that hung up is 499, and only the server's own
failures are 5xx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType

from fastapi import Response
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from vary.api.cancellation import ClientGone
from vary.api.errors import ApiError, api_error
from vary.api.protocol import ImagesResponse
from vary.api.request_context import describe_request, request_id_of
from vary.api.variation_form import VariationForm
from vary.echo import clipped
from vary.errors import DatabaseUnavailable, VaryError
from vary.safety.checks import Findings
from vary.service.attempts import Tried
from vary.service.components import Services
from vary.service.rate_limiter import ANONYMOUS, Admission, quota_period_start
from vary.service.variations import VariationResult
from vary.state.keys import KeyInfo
from vary.state.schema import UsageRow

log = logging.getLogger("vary.accounting")
tracer = trace.get_tracer(__name__)
# nginx's code for "client closed the request"; only ever recorded, never sent to anyone.
CLIENT_CLOSED_REQUEST = 499
SERVICE_UNAVAILABLE = 503


class RequestAccount:
    """`async with RequestAccount(...) as account:` around a variation request's work.

    A domain error leaving the block becomes the edge's ApiError, with the limit headers added; a
    client that left is recorded as 499 and the exception is swallowed (nobody is there to answer).
    """

    def __init__(self, request: Request, services: Services, key: KeyInfo | None) -> None:
        self.request = request
        self.services = services
        self.key = key
        self.started = time.perf_counter()
        self.usage = UsageRow(
            created_at=time.time(), key_id=key.id if key else None, status=500, request_id=request_id_of(request)
        )
        self.admission: Admission | None = None
        self.stages: dict[str, float] = {}
        self.limits = services.limiter.limits_for(key.limits if key else None)  # the key's, resolved once
        self.tried = Tried()  # filled by the service, read here whether the request succeeds or fails
        self.findings = Findings()  # the content checks' notes, likewise

    def describe(self, form: VariationForm) -> None:
        usage = self.usage
        usage.model = clipped(form.model) if form.model else self.services.registry.default.id
        usage.n, usage.size, usage.response_format, usage.user = (
            form.n,
            form.size_label,
            form.response_format,
            form.user,
        )

    async def admit_request(self) -> None:
        """What the key alone decides (before the body is read: a key over its limits uploads nothing), or a
        429; held until the request ends."""
        limiter = self.services.limiter
        with tracer.start_as_current_span("vary.admission"):
            delivered = await self._delivered()
            # Off the event loop: with a redis:// storage the windows are network calls.
            self.admission = await run_in_threadpool(
                limiter.admit_request, self.key.id if self.key else ANONYMOUS, self.limits, delivered=delivered
            )
        self.services.metrics.in_flight.inc()

    async def admit(self, images: int) -> None:
        """The request's images against the key's images window and quota, or a 429."""
        if self.admission is None:
            await self.admit_request()
        assert self.admission is not None
        with tracer.start_as_current_span("vary.admission", attributes={"vary.images": images}):
            delivered = await self._delivered()
            await run_in_threadpool(
                self.services.limiter.admit_images, self.admission, self.limits, images, delivered=delivered
            )

    async def _delivered(self) -> int:
        """The images the key's quota has counted so far this period, made and in its usage rows (0 without a
        quota)."""
        if self.limits.image_quota is None or self.key is None:
            return 0
        since = quota_period_start(time.time(), self.services.limiter.quota_period)
        delivered: int = await self.services.db_calls.run(
            "count a quota", self.services.db.images_made, self.key.id, since
        )
        return delivered

    async def respond(self, result: VariationResult) -> Response:
        """The answer, rendered from the wire models off the event loop (base64 of ten images is tens of MB)."""
        mark = time.perf_counter()
        body = await run_in_threadpool(ImagesResponse.render, result.created, result.pngs, result.urls)
        result.timings.add("encode", time.perf_counter() - mark)
        usage = self.usage
        usage.status, usage.target = 200, result.target
        result.timings.stages["total"] = time.perf_counter() - self.started
        self.stages = result.timings.stages
        self.services.metrics.observe_request(usage.model, self.stages)
        headers = {"Server-Timing": result.timings.header(), "x-vary-batch-images": str(result.batch_images)}
        if self.admission is not None:
            headers.update(self.admission.headers)
        if result.seed is not None:
            headers["x-vary-seed"] = str(result.seed)  # so a request without `seed` can be repeated exactly
        if result.target != usage.model:
            headers["x-vary-target"] = result.target  # which of a route's targets answered
        return Response(body, media_type="application/json", headers=headers)

    async def __aenter__(self) -> RequestAccount:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            return self._outcome(exc)
        finally:
            await self._record()

    def _outcome(self, exc: BaseException | None) -> bool:
        """Records the status `exc` means; True swallows it (a client that left gets no answer)."""
        if exc is None:
            return False
        if isinstance(exc, asyncio.CancelledError):  # the server is stopping: api/shutdown.py answers 503
            self.usage.status = SERVICE_UNAVAILABLE
            return False
        if isinstance(exc, (ClientGone, ClientDisconnect)):
            self.usage.status = CLIENT_CLOSED_REQUEST
            return True
        if isinstance(exc, VaryError):
            error = api_error(exc)
            self._add_limit_headers(error)
            self.usage.status = error.status
            raise error from None
        if isinstance(exc, ApiError):
            self._add_limit_headers(exc)
            self.usage.status = exc.status
        elif isinstance(exc, HTTPException):  # Starlette's own, e.g. a malformed multipart body
            self.usage.status = exc.status_code
        return False

    def _add_limit_headers(self, error: ApiError) -> None:
        if self.admission is not None:
            error.headers = {**self.admission.headers, **error.headers}

    async def _record(self) -> None:
        usage, services = self.usage, self.services
        if self.tried.attempts:  # what the request cost, answered or not, whoever pays for it
            usage.attempts, usage.targets_tried = self.tried.total, clipped(self.tried.describe(), 990)
            usage.unused_images = self.tried.unused_images or None
        policy = self.findings.describe()
        usage.policy = clipped(policy, 1000) if policy else None
        usage.latency_ms = (time.perf_counter() - self.started) * 1000.0
        services.metrics.count_request(usage.model, usage.status)
        describe_request(
            self.request,
            key_id=usage.key_id,
            user=usage.user,
            model=usage.model,
            n=usage.n,
            size=usage.size,
            policy=usage.policy,  # the operator's audit trail: never in the client's answer
            timings_ms={stage: round(seconds * 1000, 1) for stage, seconds in self.stages.items()},
        )
        # Accounting must never cost the client the images it was already given, nor hold its answer: a
        # database that does not answer in time still gets the row (or the spool does) once it can. The
        # admission is released after the row, however late: the quota never counts low.
        try:
            await services.db_calls.keep("record usage", self._release, services.db.record_usage, usage)
        except DatabaseUnavailable:
            pass  # logged in one line; the row follows when the database answers
        except Exception:
            log.exception("could not record usage")

    def _release(self) -> None:
        if self.admission is not None:
            self.services.limiter.release(self.admission)
            self.services.metrics.in_flight.dec()
