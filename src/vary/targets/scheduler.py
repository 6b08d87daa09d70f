"""Between HTTP and an engine: a bounded queue of jobs, one worker thread, a future per job.

Concurrent requests for the same output size and controls are coalesced into one pipeline call of up to
`max_batch_images` images. The oldest waiting job always leads the next batch, which is then filled
with later jobs of its size in arrival order: no job waits behind more than the jobs queued before it,
so a big n=10 request cannot starve small ones and small ones cannot starve it.

Every future is resolved or failed, whatever the engine does. A full queue refuses at once
(`Overloaded`) instead of growing a backlog. A place in the queue can be reserved before the
request's image is decoded, so that a refusal never costs a decode. A job whose client went away is
skipped before it starts; a running batch stops at its next denoising step once every client in it
has gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, NonRecordingSpan, SpanContext

from vary.engines.base import Batch, Controls, Engine, Frames, GenerationCancelled, VariationItem
from vary.errors import Overloaded, ShuttingDown

log = logging.getLogger("vary.scheduler")
tracer = trace.get_tracer(__name__)


@dataclass(eq=False)
class Job:
    item: VariationItem
    size: int
    controls: Controls
    future: Future[Frames] = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)
    # perf_counter() stamps, for queue-wait and generation timings.
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    finished_at: float = 0.0
    batch_images: int = 0  # images in the pipeline call this job rode in
    # The span of the request that queued the job: its batch's span links to it (traces, ops/traces.py).
    span_context: SpanContext = INVALID_SPAN_CONTEXT

    @property
    def batch_key(self) -> tuple[int, Controls]:
        """Jobs share a pipeline call only when they render the same size with the same controls."""
        return self.size, self.controls

    def cancel(self) -> None:
        """The client is gone: drop the job if it has not started, stop it between steps if it has."""
        self.abandoned.set()
        self.future.cancel()


@dataclass(eq=False)
class Reservation:
    """A place in the queue, held while the request's input is prepared; submit() uses it, release() frees it."""

    scheduler: Scheduler
    used: bool = False

    def release(self) -> None:
        self.scheduler._unreserve(self)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int,
        max_batch_images: int,
        retry_after_seconds: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_batch = on_batch  # (images, seconds) after each successful pipeline call
        self.max_queue = max_queue
        self.max_batch_images = max_batch_images
        self.retry_after_seconds = retry_after_seconds
        self._pending: deque[Job] = deque()
        self._reserved = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"engine:{engine.info.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reserve(self) -> Reservation:
        """A place in the queue, or Overloaded at once: settled before any work is done for the request."""
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            if len(self._pending) + self._reserved >= self.max_queue:
                # Jobs whose clients left still sit in the queue until the worker reaches them.
                self._pending = deque(j for j in self._pending if not j.future.cancelled())
            if len(self._pending) + self._reserved >= self.max_queue:
                raise Overloaded(self.engine.info.id, self.retry_after_seconds)
            self._reserved += 1
        return Reservation(self)

    def submit(self, item: VariationItem, size: int, controls: Controls, reservation: Reservation | None = None) -> Job:
        """Queues a job in its reserved place (or a new one, which may raise Overloaded)."""
        reservation = reservation or self.reserve()
        job = Job(item, size, controls, span_context=trace.get_current_span().get_span_context())
        with self._cond:
            self._take(reservation)
            if self._closed:
                raise ShuttingDown()
            self._pending.append(job)
            self._cond.notify()
        return job

    def _unreserve(self, reservation: Reservation) -> None:
        with self._cond:
            self._take(reservation)

    def _take(self, reservation: Reservation) -> None:
        if not reservation.used:  # under self._cond
            reservation.used = True
            self._reserved -= 1

    def depth(self) -> int:
        """Jobs waiting for the engine (the running batch not included)."""
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 30.0) -> None:
        """Fails what is still queued, lets the running batch finish, stops the worker."""
        with self._cond:
            self._closed = True
            queued, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in queued:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown())
        self._thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        """The oldest job plus later jobs of its size that fit; None once closed."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._pending.popleft()
            batch, images, rest = [head], head.item.n, deque[Job]()
            for job in self._pending:
                if job.batch_key == head.batch_key and images + job.item.n <= self.max_batch_images:
                    batch.append(job)
                    images += job.item.n
                else:
                    rest.append(job)
            self._pending = rest
        # Outside the lock: a job cancelled while queued is dropped here, before any model work.
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while (jobs := self._next_batch()) is not None:
            if jobs:
                self._generate(jobs)

    def _generate(self, jobs: list[Job]) -> None:
        batch = Batch(
            items=tuple(job.item for job in jobs),
            size=jobs[0].size,
            controls=jobs[0].controls,
            should_stop=lambda: all(job.abandoned.is_set() for job in jobs),
        )
        started = time.perf_counter()
        try:
            with self._batch_span(jobs, batch):
                outputs = self.engine.generate(batch)
        except GenerationCancelled as exc:
            log.info("generation stopped early: its client left")
            self._fail(jobs, exc)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiting futures
            self._fail(jobs, exc)
        else:
            finished = time.perf_counter()
            for job, frames in zip(jobs, outputs, strict=True):
                job.started_at, job.finished_at, job.batch_images = started, finished, batch.total_images
                job.future.set_result(frames)
            if self.on_batch is not None:
                try:
                    self.on_batch(batch.total_images, finished - started)
                except Exception:  # accounting must never stop the worker
                    log.exception("the batch observer failed")

    def _batch_span(self, jobs: list[Job], batch: Batch) -> AbstractContextManager[trace.Span]:
        """One span per pipeline call, linked to the request of every job in it; a child of the oldest one's,
        so that request's trace holds its generation (the others reach it through the links)."""
        traced = [job.span_context for job in jobs if job.span_context.is_valid]
        parent = trace.set_span_in_context(NonRecordingSpan(traced[0])) if traced else None
        span = tracer.start_span(
            "vary.generate",
            context=parent,
            links=[Link(context) for context in traced],
            attributes={
                "gen_ai.request.model": self.engine.info.id,
                "vary.batch.images": batch.total_images,
                "vary.batch.requests": len(jobs),
                "vary.size": f"{batch.size}x{batch.size}",
            },
        )
        return trace.use_span(span, end_on_exit=True)

    @staticmethod
    def _fail(jobs: list[Job], exc: BaseException) -> None:
        for job in jobs:
            job.future.set_exception(exc)
