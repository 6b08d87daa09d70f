"""A model on this machine as a Target: its engine behind a scheduler that batches and bounds the queue.

The request's road here: resolve the controls, take a place in the queue (a full queue refuses
before the image is decoded), decode and prepare the input on a request thread, wait for the batch,
then resize and encode the PNGs on a request thread, off the thread that drives the GPU.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from starlette.concurrency import run_in_threadpool

from vary.controls import Controls
from vary.engines.base import Engine, Frames, VariationItem
from vary.imaging import ImageDecoder, encode_png
from vary.request import VariationRequest
from vary.targets.base import Made, Resilience
from vary.targets.scheduler import Scheduler

if TYPE_CHECKING:
    from vary.settings import Settings

tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class QueuePolicy:
    max_queue: int = 64  # requests waiting per model before Overloaded
    max_batch_images: int = 16  # images per pipeline call when requests are coalesced
    retry_after_seconds: int = 2  # what a refusal asks the client to wait

    @classmethod
    def of(cls, settings: Settings) -> QueuePolicy:
        return cls(
            max_queue=settings.queue_size,
            max_batch_images=settings.max_batch_images,
            retry_after_seconds=settings.retry_after_seconds,
        )


class LocalModel:
    remote = False
    resilience = Resilience()  # one attempt: a full queue or a failed load moves a route on at once

    def __init__(self, engine: Engine, *, decoder: ImageDecoder, queue: QueuePolicy = QueuePolicy()) -> None:
        self.engine = engine
        self.decoder = decoder
        self.scheduler = Scheduler(
            engine,
            max_queue=queue.max_queue,
            max_batch_images=queue.max_batch_images,
            retry_after_seconds=queue.retry_after_seconds,
        )

    @property
    def name(self) -> str:
        return self.engine.info.id

    @property
    def loaded(self) -> bool:
        return self.engine.loaded

    def queue_depth(self) -> int:
        return self.scheduler.depth()

    def start(self, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.scheduler.on_batch = on_batch
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.close()

    async def make(self, request: VariationRequest) -> Made:
        stages: dict[str, float] = {}
        mark = time.perf_counter()
        # 1. Everything about the request is settled before model work, and the queue before the decode.
        controls = self.engine.controls(request.controls)
        reservation = self.scheduler.reserve()
        try:
            # The CLIP preprocessing (and a lazy model's first load) runs here, off the GPU thread.
            with tracer.start_as_current_span("vary.prepare", attributes={"vary.images": len(request.images)}):
                conditioning = await run_in_threadpool(self._prepare, request, controls)
            seed = request.controls.seed if request.controls.seed is not None else secrets.randbits(63)
            item = VariationItem(conditioning=conditioning, n=request.n, seed=seed)
            job = self.scheduler.submit(item, request.size, controls, reservation)
        finally:
            reservation.release()  # nothing to free once submitted
        stages["prepare"] = time.perf_counter() - mark

        # 2. Wait for the batch; a cancelled request drops its job, or stops its batch between steps.
        try:
            frames = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.cancel()
            raise
        stages["queue"] = job.started_at - job.queued_at
        stages["generate"] = job.finished_at - job.started_at
        # Drawn after the wait, from the job's stamps: a span open across the wait would be the same.
        queued, started = _wall_ns(job.queued_at, job.started_at)
        tracer.start_span("vary.queue", start_time=queued).end(started)

        # 3. The exact size, as PNGs.
        mark = time.perf_counter()
        with tracer.start_as_current_span("vary.encode", attributes={"vary.images": len(frames)}):
            pngs = await run_in_threadpool(self._encode, frames, request.size)
        stages["encode"] = time.perf_counter() - mark
        return Made(pngs=pngs, seed=seed, batch_images=job.batch_images, stages=stages)

    def _prepare(self, request: VariationRequest, controls: Controls) -> object:
        try:
            images = [self.decoder.rgb(image) for image in request.images]
            return self.engine.prepare(images, request.size, controls, request.blend)
        finally:
            for image in request.images:
                image.release()

    def _encode(self, frames: Frames, size: int) -> list[bytes]:
        return [encode_png(frame) for frame in self.engine.finish(frames, size)]


def _wall_ns(*stamps: float) -> list[int]:
    """perf_counter() stamps as nanoseconds since the epoch, as spans take their times (one offset for all,
    so their order holds)."""
    offset = time.time_ns() - time.perf_counter_ns()
    return [offset + int(stamp * 1e9) for stamp in stamps]
