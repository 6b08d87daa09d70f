"""One variation request, start to finish, in the service's own terms: no HTTP here.

The road: the registry names the model's targets; a model with a remote target has its images
checked first (a bad image is refused before any provider is called and billed); the gateway tries
the targets; the images come back as base64 or are stored and signed as URLs, in OpenAI's
ImagesResponse JSON, built once as bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pybase64
from starlette.concurrency import run_in_threadpool

from vary.imaging import ImageDecoder
from vary.request import VariationRequest
from vary.service.attempts import Tried
from vary.service.gateway import Gateway
from vary.service.registry import ModelRegistry
from vary.state.image_store import ImageStore, Presigner
from vary.state.signing import UrlSigner
from vary.targets.base import Made


@dataclass
class Timings:
    """Seconds spent in each stage of one request, for the Server-Timing header."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items())


@dataclass(frozen=True)
class VariationResult:
    body: bytes  # the ImagesResponse JSON, built once
    timings: Timings
    batch_images: int  # images in the pipeline call this request shared
    seed: int | None  # the request's seed, given or drawn; None when a provider made the images
    target: str  # the model that answered: the requested one, or a route's target
    tried: Tried  # the targets tried and the attempts on each


@dataclass(frozen=True)
class Links:
    """How image URLs are made, in this one place: signed by vary, valid for `ttl_seconds`, on `public_url` or
    the request's own base; or, with a `presigner` (VARY_STORAGE_PRESIGN=1), the store's own presigned URLs."""

    signer: UrlSigner
    ttl_seconds: int
    public_url: str | None = None
    presigner: Presigner | None = None

    def url(self, image_id: str, *, expires: int, base_url: str) -> str:
        """The URL of a stored image, valid until `expires` (unix seconds)."""
        if self.presigner is not None:
            # The same expiry as vary's own signature would carry, counted from now.
            return self.presigner.presigned_url(image_id, expires_in=max(1, expires - int(time.time())))
        base = (self.public_url or base_url).rstrip("/")
        signature = self.signer.signature(image_id, expires)
        return f"{base}/v1/files/{image_id}.png?expires={expires}&signature={signature}"


@dataclass
class VariationService:
    registry: ModelRegistry
    decoder: ImageDecoder
    store: ImageStore
    links: Links
    gateway: Gateway = field(default_factory=Gateway)

    async def create(self, request: VariationRequest, *, base_url: str, tried: Tried | None = None) -> VariationResult:
        """The images, or a domain error; `tried` (the caller's) holds the attempts made, however it ends."""
        tried = Tried() if tried is None else tried
        served = self.registry.resolve(request.model)
        timings = Timings()
        if any(target.remote for target in served.targets):
            # Decoded once: a local target later in the route uses this decode.
            mark = time.perf_counter()
            for image in request.images:
                await run_in_threadpool(self.decoder.rgb, image)
            timings.add("prepare", time.perf_counter() - mark)

        made, answered = await self.gateway.run(
            served.targets, request, deadline_seconds=served.deadline_seconds, tried=tried
        )
        for stage, seconds in made.stages.items():
            timings.add(stage, seconds)

        mark = time.perf_counter()
        body = await run_in_threadpool(self._body, made, request.response_format, int(time.time()), base_url)
        timings.add("encode", time.perf_counter() - mark)
        batch_images = made.batch_images or request.n
        return VariationResult(body, timings, batch_images, made.seed, answered.target, tried)

    def _body(self, made: Made, response_format: str, created: int, base_url: str) -> bytes:
        if made.urls is not None:  # handed on as the provider gave them (rehost_urls = false)
            return _images_body(created, b"url", [_json_string(url) for url in made.urls])
        if response_format == "b64_json":
            return _images_body(created, b"b64_json", [pybase64.b64encode(png) for png in made.pngs])
        # The expiry is fixed before the images are stored, so the sweeper (which ages them by their
        # mtime or LastModified) can never delete an image while a URL to it is still valid.
        expires = created + self.links.ttl_seconds
        urls = []
        for png in made.pngs:
            image_id = self.store.put(png)
            # Escaped: the base comes from the request's Host header, which a client controls.
            urls.append(_json_string(self.links.url(image_id, expires=expires, base_url=base_url)))
        return _images_body(created, b"url", urls)


def _json_string(text: str) -> bytes:
    """`text` as the inside of a JSON string."""
    return json.dumps(text)[1:-1].encode()


def _images_body(created: int, field: bytes, values: list[bytes]) -> bytes:
    """The ImagesResponse JSON from values that are already JSON-safe string contents.

    One join, so each value (a base64 image can be megabytes) is copied once, into the body.
    """
    parts = [b'{"created":%d,"data":[' % created]
    for i, value in enumerate(values):
        parts += [b',{"' if i else b'{"', field, b'":"', value, b'"}']
    parts.append(b"]}")
    return b"".join(parts)
