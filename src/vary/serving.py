"""Serving logic between the route and the engine: one variation request, start to finish."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool

from vary.api.protocol import Image, ImagesResponse
from vary.api.variation_form import VariationForm
from vary.engines.base import VariationItem
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
    ) -> ImagesResponse:
        # 1. Everything about the request is checked before any model work.
        engine = self.registry.resolve(form.model)
        image = await run_in_threadpool(
            load_variation_input,
            form.image,
            max_bytes=self.settings.max_image_bytes,
            max_side=self.settings.max_image_side,
        )
        # 2. Queue it; wait for the images or for the client to leave, whichever comes first.
        item = VariationItem(image=image, n=form.n, seed=secrets.randbits(63))
        job = self.schedulers[engine.info.id].submit(item, form.size)
        images = await _until_disconnect(job, wait_for_disconnect)
        # 3. Encode (and store) off the event loop.
        created = int(time.time())
        if form.response_format == "b64_json":
            data = await run_in_threadpool(_as_base64, images)
        else:
            data = await run_in_threadpool(self._store_and_sign, images, base_url, created)
        return ImagesResponse(created=created, data=data)

    def _store_and_sign(self, images: list[PILImage.Image], base_url: str, created: int) -> list[Image]:
        # The expiry is fixed before the files are written, so the sweeper (which ages files by
        # their mtime) can never delete a file while a URL to it is still valid.
        expires = created + self.settings.url_ttl_seconds
        base = (self.settings.public_url or base_url).rstrip("/")
        out = []
        for img in images:
            image_id = self.store.put(encode_png(img))
            signature = self.signer.signature(image_id, expires)
            out.append(Image(url=f"{base}/v1/files/{image_id}.png?expires={expires}&signature={signature}"))
        return out


def _as_base64(images: list[PILImage.Image]) -> list[Image]:
    return [Image(b64_json=base64.b64encode(encode_png(img)).decode("ascii")) for img in images]


async def _until_disconnect(job: Job, wait_for_disconnect: Callable[[], Awaitable[None]]) -> list[PILImage.Image]:
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
