"""Serving logic between the route and the engine: one variation request, start to finish."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pybase64
from PIL import Image
from starlette.concurrency import run_in_threadpool

from vary.api.errors import ApiError, invalid, model_unavailable
from vary.api.variation_form import VariationForm
from vary.engines.base import ControlError, Controls, Engine, Frames, ModelUnavailable, VariationItem
from vary.engines.registry import ModelRegistry
from vary.engines.upstream import UpstreamEngine, UpstreamImages, UpstreamRequest
from vary.gateway import Gateway
from vary.imaging import encode_png, fit_to_size, load_variation_input, to_rgb
from vary.scheduler import Job, Scheduler
from vary.settings import Settings
from vary.signing import UrlSigner
from vary.storage import ImageStore

log = logging.getLogger("vary.serving")
_T = TypeVar("_T")


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
    seed: int | None  # the request's seed, given or drawn; None when a provider made the images
    target: str = ""  # the model that answered: the requested one, or a route's target
    attempts: int = 1


@dataclass
class VariationService:
    settings: Settings
    registry: ModelRegistry
    schedulers: dict[str, Scheduler]
    store: ImageStore
    signer: UrlSigner
    gateway: Gateway = dataclasses.field(default_factory=Gateway)

    async def create(
        self,
        form: VariationForm,
        *,
        base_url: str,
        wait_for_disconnect: Callable[[], Awaitable[None]],
    ) -> VariationResult:
        targets = self.registry.targets(form.model)
        if len(targets) == 1 and not isinstance(targets[0], UpstreamEngine):
            return await self._local(targets[0], form, base_url, wait_for_disconnect)
        return await self._routed(targets, form, base_url, wait_for_disconnect)

    async def _local(
        self, engine: Engine, form: VariationForm, base_url: str, wait_for_disconnect: Callable[[], Awaitable[None]]
    ) -> VariationResult:
        timings = Timings()
        mark = time.perf_counter()
        # 1. Everything about the request is checked before any model work; the engine's CPU
        #    preprocessing happens here too, off the thread that drives the GPU.
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
        body = await run_in_threadpool(self._local_body, engine, frames, form, created, base_url)
        timings.stages["encode"] = time.perf_counter() - mark
        return VariationResult(body, timings, job.batch_images, seed, target=engine.info.id)

    async def _routed(
        self, targets: list[Any], form: VariationForm, base_url: str, wait_for_disconnect: Callable[[], Awaitable[None]]
    ) -> VariationResult:
        """Through the gateway: upstream providers and local models, tried in order."""
        timings = Timings()
        mark = time.perf_counter()
        # The image is checked here too, so a bad one is a 400 before any provider is called (and billed).
        await run_in_threadpool(
            load_variation_input,
            form.image,
            max_bytes=self.settings.max_image_bytes,
            max_side=self.settings.max_image_side,
        )
        timings.stages["prepare"] = time.perf_counter() - mark
        request = UpstreamRequest(
            image=form.image,
            n=form.n,
            size=form.size,
            response_format=form.response_format,
            user=form.user,
            controls={k: v for k, v in dataclasses.asdict(form.controls).items() if v is not None},
        )
        mark = time.perf_counter()
        answer, served = await _until_disconnect_async(
            # Local targets need no watcher of their own: this one cancels the whole attempt.
            self.gateway.run(targets, request, lambda engine: self._local(engine, form, base_url, _never)),
            wait_for_disconnect,
        )
        if isinstance(answer, VariationResult):  # a local model answered
            return dataclasses.replace(answer, target=served.target, attempts=served.attempts)
        timings.stages["upstream"] = time.perf_counter() - mark
        mark = time.perf_counter()
        body = await run_in_threadpool(self._upstream_body, answer, form, int(time.time()), base_url)
        timings.stages["encode"] = time.perf_counter() - mark
        return VariationResult(body, timings, form.n, None, target=served.target, attempts=served.attempts)

    def _prepare(self, engine: Engine, data: bytes, size: int, controls: Controls) -> object:
        image = load_variation_input(
            data, max_bytes=self.settings.max_image_bytes, max_side=self.settings.max_image_side
        )
        # A lazily loaded model loads here, on the first request's thread, once.
        return engine.prepare(image, size, controls)

    def _local_body(self, engine: Engine, frames: Frames, form: VariationForm, created: int, base_url: str) -> bytes:
        pngs = [encode_png(frame) for frame in engine.finish(frames, form.size)]
        return self._body(pngs, form.response_format, created, base_url)

    def _upstream_body(self, answer: UpstreamImages, form: VariationForm, created: int, base_url: str) -> bytes:
        if answer.urls is not None:  # handed on as the provider gave them (rehost_urls = false)
            return _images_body(created, b"url", [json.dumps(url)[1:-1].encode() for url in answer.urls])
        pngs = [_png_of_size(data, form.size) for data in answer.pngs or []]
        return self._body(pngs, form.response_format, created, base_url)

    def _body(self, pngs: list[bytes], response_format: str, created: int, base_url: str) -> bytes:
        if response_format == "b64_json":
            return _images_body(created, b"b64_json", [pybase64.b64encode(png) for png in pngs])
        # The expiry is fixed before the files are written, so the sweeper (which ages files by
        # their mtime) can never delete a file while a URL to it is still valid.
        expires = created + self.settings.url_ttl_seconds
        base = (self.settings.public_url or base_url).rstrip("/")
        urls = []
        for png in pngs:
            image_id = self.store.put(png)
            signature = self.signer.signature(image_id, expires)
            url = f"{base}/v1/files/{image_id}.png?expires={expires}&signature={signature}"
            # Escaped: the base comes from the request's Host header, which a client controls.
            urls.append(json.dumps(url)[1:-1].encode())
        return _images_body(created, b"url", urls)


def _png_of_size(data: bytes, size: int) -> bytes:
    """A provider's image as a PNG of exactly `size` px a side (gpt-image answers at 1024, for one)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError):
        raise ApiError(
            502, "A provider answered with an image that is not readable.", type="server_error", code="upstream_error"
        ) from None
    if image.format == "PNG" and image.size == (size, size) and image.mode in ("RGB", "RGBA"):
        return data
    return encode_png(np.asarray(fit_to_size(to_rgb(image), size)))


def _images_body(created: int, field: bytes, values: list[bytes]) -> bytes:
    """The ImagesResponse JSON from values that are already JSON-safe string contents.

    One join, so each value (a base64 image can be megabytes) is copied once, into the body.
    """
    parts = [b'{"created":%d,"data":[' % created]
    for i, value in enumerate(values):
        parts += [b',{"' if i else b'{"', field, b'":"', value, b'"}']
    parts.append(b"]}")
    return b"".join(parts)


async def _never() -> None:
    await asyncio.Event().wait()


async def _until_disconnect_async(work: Awaitable[_T], wait_for_disconnect: Callable[[], Awaitable[None]]) -> _T:
    """`work`, unless the client hangs up first: then it is cancelled (an upstream call is abandoned)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone
    return task.result()


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
