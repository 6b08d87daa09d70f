"""Serving logic between the route and the engine: one variation request, start to finish."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pybase64
from starlette.concurrency import run_in_threadpool

from vary.api.errors import invalid, model_unavailable
from vary.api.variation_form import VariationForm
from vary.engines.base import ControlError, Controls, Engine, Frames, ModelUnavailable, VariationItem
from vary.engines.registry import ModelRegistry
from vary.imaging import encode_png, load_variation_input
from vary.scheduler import Job, Scheduler
from vary.settings import Settings
from vary.signing import UrlSigner
from vary.storage import ImageStore

log = logging.getLogger("vary.serving")


class ClientGone(Exception):
    """The client disconnected before its images were ready."""


@dataclass
class Timings:
    """Seconds spent in each stage of one request, for the Server-Timing header."""

    stages: dict[str, float] = field(default_factory=dict)

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items())


@dataclass(frozen=True)
class VariationResult:
    body: bytes  # the ImagesResponse JSON, built once
    timings: Timings
    batch_images: int  # images in the pipeline call this request shared
    seed: int  # the request's seed, given or drawn


@dataclass
class VariationService:
    settings: Settings
    registry: ModelRegistry
    schedulers: dict[str, Scheduler]
    store: ImageStore
    signer: UrlSigner

    async def create(
        self,
        form: VariationForm,
        *,
        base_url: str,
        wait_for_disconnect: Callable[[], Awaitable[None]],
    ) -> VariationResult:
        timings = Timings()
        mark = time.perf_counter()
        # 1. Everything about the request is checked before any model work; the engine's CPU
        #    preprocessing happens here too, off the thread that drives the GPU.
        engine = self.registry.resolve(form.model)
        try:
            controls = engine.controls(form.controls)
        except ControlError as exc:
            raise invalid(exc.message, param=exc.param) from None
        try:
            conditioning = await run_in_threadpool(self._prepare, engine, form.image, form.size, controls)
        except ModelUnavailable as exc:
            raise model_unavailable(exc.model) from None
        timings.stages["prepare"] = time.perf_counter() - mark

        # 2. Queue it; wait for the images or for the client to leave, whichever comes first.
        seed = form.controls.seed if form.controls.seed is not None else secrets.randbits(63)
        item = VariationItem(conditioning=conditioning, n=form.n, seed=seed)
        job = self.schedulers[engine.info.id].submit(item, form.size, controls)
        frames = await _until_disconnect(job, wait_for_disconnect)
        timings.stages["queue"] = job.started_at - job.queued_at
        timings.stages["generate"] = job.finished_at - job.started_at

        # 3. Resize, encode (and store) off the event loop.
        mark = time.perf_counter()
        created = int(time.time())
        if form.response_format == "b64_json":
            body = await run_in_threadpool(self._base64_body, engine, frames, form.size, created)
        else:
            body = await run_in_threadpool(self._url_body, engine, frames, form.size, created, base_url)
        timings.stages["encode"] = time.perf_counter() - mark
        return VariationResult(body, timings, job.batch_images, seed)

    def _prepare(self, engine: Engine, data: bytes, size: int, controls: Controls) -> object:
        image = load_variation_input(
            data, max_bytes=self.settings.max_image_bytes, max_side=self.settings.max_image_side
        )
        # A lazily loaded model loads here, on the first request's thread, once.
        return engine.prepare(image, size, controls)

    def _base64_body(self, engine: Engine, frames: Frames, size: int, created: int) -> bytes:
        encoded = [pybase64.b64encode(encode_png(frame)) for frame in engine.finish(frames, size)]
        return _images_body(created, b"b64_json", encoded)

    def _url_body(self, engine: Engine, frames: Frames, size: int, created: int, base_url: str) -> bytes:
        # The expiry is fixed before the files are written, so the sweeper (which ages files by
        # their mtime) can never delete a file while a URL to it is still valid.
        expires = created + self.settings.url_ttl_seconds
        base = (self.settings.public_url or base_url).rstrip("/")
        urls = []
        for frame in engine.finish(frames, size):
            image_id = self.store.put(encode_png(frame))
            signature = self.signer.signature(image_id, expires)
            url = f"{base}/v1/files/{image_id}.png?expires={expires}&signature={signature}"
            # Escaped: the base comes from the request's Host header, which a client controls.
            urls.append(json.dumps(url)[1:-1].encode())
        return _images_body(created, b"url", urls)


def _images_body(created: int, field: bytes, values: list[bytes]) -> bytes:
    """The ImagesResponse JSON from values that are already JSON-safe string contents.

    One join, so each value (a base64 image can be megabytes) is copied once, into the body.
    """
    parts = [b'{"created":%d,"data":[' % created]
    for i, value in enumerate(values):
        parts += [b',{"' if i else b'{"', field, b'":"', value, b'"}']
    parts.append(b"]}")
    return b"".join(parts)


async def _until_disconnect(job: Job, wait_for_disconnect: Callable[[], Awaitable[None]]) -> Frames:
    result = asyncio.wrap_future(job.future)
    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel()
        raise
    finally:
        watcher.cancel()
    if not result.done():
        job.cancel()
        result.cancel()
        raise ClientGone
    return result.result()
