"""Hosted providers as Targets: another OpenAI-compatible server, Azure OpenAI, and OpenAI's gpt-image edits.

One call of `make` is one attempt: a multipart request rebuilt from the validated request (never the
client's body forwarded), and its answer read into PNGs of the asked size, or a domain error whose
kind says whether a retry could help: UpstreamFailure (retryable or not) or UpstreamRefused (the
request itself, passed on). Retries, fallbacks and the circuit breaker are the gateway's (gateway.py).

Every answer is classified here, where it is read, images decoded and checked included (the table
is in docs/gateway.md): success; retryable (5xx, 429, timeouts, resets, malformed,
oversized or unreadable answers); vary's own configuration (UpstreamMisconfigured: 401, 403, 404,
3xx, a missing key); or the client's request (UpstreamRefused: any other 4xx).

Upstream keys come from environment variables named in the configuration, are sent only to the
configured base URL, and never appear in a response, a log line or an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pybase64
from starlette.concurrency import run_in_threadpool
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from vary.controls import Capabilities
from vary.echo import clipped
from vary.errors import UpstreamFailure, UpstreamMisconfigured, UpstreamRefused
from vary.request import VariationRequest
from vary.targets.base import Made, Resilience
from vary.targets.hosted.answers import (
    ABSOLUTE_HTTP_URL,
    ERROR_BODY_BYTES,
    MAX_IMAGE_BYTES,
    pngs_of_size,
    read_capped,
    read_start,
    refusal,
    retry_after,
    scrub,
)
from vary.targets.hosted.downloads import Downloader, DownloadPolicy
from vary.targets.hosted.provider import HostedOptions, HostedProvider, Lifecycle
from vary.targets.hosted.registry import register_provider

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_HOST = "api.openai.com"
DEFAULT_PROMPT = (
    "Create a variation of this image: keep its subject, composition, palette and style, "
    "and change the details, as an artist's second take on the same picture."
)
# gpt-image edits produce these sizes; the others are resized from 1024x1024 by vary.
GPT_IMAGE_SIZE = "1024x1024"
# Error codes that name vary's deployment or upstream model, whatever the status they come with.
CONFIGURATION_CODES = frozenset({"DeploymentNotFound", "model_not_found"})


@dataclass(frozen=True)
class UpstreamOptions(HostedOptions):
    # The model name sent upstream; None sends none (OpenAI-compatible) or the engine's default.
    upstream_model: str | None = None
    # Also send vary's controls (seed, strength, steps, guidance_scale): for an upstream that is a vary.
    forward_controls: bool = False
    # azure-openai
    deployment: str | None = None
    api_version: str = "2024-02-01"
    # openai-gpt-image
    prompt: str = DEFAULT_PROMPT
    quality: str | None = None


@register_provider
class OpenAIApiProvider(HostedProvider):
    """A provider that speaks OpenAI's images API, with an HTTP pool of its own."""

    engines = ("openai-compatible", "azure-openai", "openai-gpt-image")
    options_type = UpstreamOptions
    default_base_url = OPENAI_BASE_URL
    options: UpstreamOptions
    lifecycle = {
        "openai-compatible": Lifecycle("live", note="another OpenAI-compatible server, such as a vary"),
        "azure-openai": Lifecycle("retired", note="Azure OpenAI's variations endpoint no longer accepts requests"),
        "openai-gpt-image": Lifecycle("live"),
    }

    @classmethod
    def lifecycle_of(cls, engine: str, options: HostedOptions) -> Lifecycle:
        # OpenAI's own /v1/images/variations (the default base_url) went with dall-e-2.
        if engine == "openai-compatible" and httpx.URL(options.base_url or OPENAI_BASE_URL).host == OPENAI_HOST:
            return Lifecycle("retired", datetime.date(2026, 5, 12), "OpenAI's variations endpoint went with dall-e-2")
        return super().lifecycle_of(engine, options)

    @classmethod
    def options_for(cls, engine: str, values: Mapping[str, Any]) -> UpstreamOptions:
        options = UpstreamOptions.of(values)
        if engine == "azure-openai" and not options.deployment:
            raise ValueError(
                "azure-openai needs options.deployment (and base_url = https://<resource>.openai.azure.com)"
            )
        return options

    def _open(self) -> None:
        if "openai" in self.kind:
            self.info = dataclasses.replace(self.info, owned_by="openai")
        base_url = self.base_url or OPENAI_BASE_URL
        timeout = httpx.Timeout(self.options.timeout_seconds, connect=min(10.0, self.options.timeout_seconds))
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", timeout=timeout)
        # Downloads of answer URLs, never with the provider's key, and only where its configuration allows.
        self.downloads = Downloader(DownloadPolicy.of(base_url, self.options.download_hosts), timeout=timeout)

    @property
    def resilience(self) -> Resilience:
        # None: make() times the generation itself, so a slow re-hosting download never makes the gateway ask
        # for (and pay for) the generation again.
        return self.options.resilience(timeout_seconds=None)

    def capabilities(self) -> Capabilities:
        if self.kind == "openai-compatible" and self.options.forward_controls:
            return Capabilities()  # an upstream vary: every control, as it honours them
        if self.kind == "openai-gpt-image":  # edits take several images, blended as the model sees fit
            return Capabilities(seed=False, steps=False, guidance_scale=False, img2img=False, image_weights=False)
        return super().capabilities()

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.downloads.aclose()

    def scrub(self, text: str) -> str:
        """`text` without the provider's key in it, in any form it can be echoed, for anything that leaves here."""
        return scrub(text, self.secret())

    async def make(self, request: VariationRequest) -> Made:
        """One attempt; raises UpstreamFailure (or UpstreamMisconfigured) or UpstreamRefused."""
        started = time.perf_counter()
        key = self.secret()
        if self.api_key_env and key is None:
            raise UpstreamMisconfigured(f"the environment variable {self.api_key_env} is not set")
        path, headers, data = self._request(request, key)
        files = self._files(request)
        try:
            # The whole answer within the timeout: a body that trickles in counts as a timeout.
            status, answer_headers, body = await asyncio.wait_for(
                self._post(path, headers, data, files, _answer_limit(request.n)), self.options.timeout_seconds
            )
        except asyncio.TimeoutError:
            raise UpstreamFailure("the provider did not answer in time", retryable=True) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"the connection failed ({type(exc).__name__})", retryable=True) from None
        if status != 200:
            raise self.error_from(status, answer_headers, body)
        # Parsed off the event loop: ten base64 images at the cap are 200 MB of JSON, seconds of parsing.
        items = await run_in_threadpool(_items_of, body, request.n)
        del body
        made = await self._images(items, request.size)
        return dataclasses.replace(made, stages={"upstream": time.perf_counter() - started})

    async def _post(
        self, path: str, headers: dict[str, str], data: dict[str, str], files: list[tuple[str, Any]], limit: int
    ) -> tuple[int, httpx.Headers, bytes]:
        """Status, headers and body, read as it streams in and refused past `limit` bytes; an error's body only
        up to ERROR_BODY_BYTES (its message is cut to 200 characters anyway)."""
        async with self.client.stream("POST", path, headers=headers, data=data, files=files) as response:
            if response.status_code != 200:
                return response.status_code, response.headers, await read_start(response, ERROR_BODY_BYTES)
            body = await read_capped(response, limit, "the provider's answer")
            return response.status_code, response.headers, body

    def _files(self, request: VariationRequest) -> list[tuple[str, tuple[str, bytes, str]]]:
        # Several images only reach providers whose capabilities take them: the service refused the rest.
        if len(request.images) == 1:
            return [("image", ("image.png", request.images[0].data, "image/png"))]
        return [("image[]", (f"image-{k}.png", image.data, "image/png")) for k, image in enumerate(request.images)]

    def _request(self, request: VariationRequest, key: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
        options = self.options
        data = {"n": str(request.n)}
        if request.user:
            data["user"] = request.user
        if self.kind == "openai-gpt-image":
            data |= {"prompt": options.prompt, "model": options.upstream_model or "gpt-image-1", "size": GPT_IMAGE_SIZE}
            if options.quality:
                data["quality"] = options.quality
            return "images/edits", _bearer(key), data
        data |= {"size": f"{request.size}x{request.size}", "response_format": request.response_format}
        if self.kind == "azure-openai":
            path = f"openai/deployments/{options.deployment}/images/variations?api-version={options.api_version}"
            return path, {"api-key": key} if key else {}, data
        if options.upstream_model:
            data["model"] = options.upstream_model
        if options.forward_controls:
            data |= {name: str(value) for name, value in request.controls.given().items()}
            if request.weights:
                data["image_weights"] = ",".join(f"{weight:g}" for weight in request.weights)
        return "images/variations", _bearer(key), data

    async def _images(self, items: list[Any], size: int) -> Made:
        if all(isinstance(item, dict) and isinstance(item.get("b64_json"), str) for item in items):
            if any(len(item["b64_json"]) // 4 * 3 > MAX_IMAGE_BYTES for item in items):
                raise UpstreamFailure(f"the provider's image was larger than {MAX_IMAGE_BYTES} bytes", retryable=True)
            # Read here, inside the attempt: an unreadable image is this target's failure, not the client's.
            return Made(pngs=await run_in_threadpool(_decoded, [item["b64_json"] for item in items], size))
        if all(isinstance(item, dict) and isinstance(item.get("url"), str) for item in items):
            urls = [item["url"] for item in items]
            if not self.options.rehost_urls:
                # Handed to the client (and the playground's links) as they are: nothing but a web address.
                if not all(ABSOLUTE_HTTP_URL.fullmatch(url) for url in urls):
                    raise UpstreamFailure("the provider's answer had a url that is not an http(s) URL", retryable=True)
                return Made(urls=urls)
            # The generation is paid for: from here on a failure retries the download, and if that
            # fails too, the next target is tried; this one is never asked to generate again.
            answers = [await self._download(url) for url in urls]
            return Made(pngs=await run_in_threadpool(pngs_of_size, answers, size, False))
        raise UpstreamFailure("the provider's answer had neither b64_json nor url", retryable=True)

    def error_from(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure | UpstreamRefused:
        """A provider's non-200 answer, classified (the table in docs/gateway.md)."""
        error: dict[str, Any] = {}
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
        except ValueError:
            pass
        text = body.decode("utf-8", "replace")
        # Scrubbed before it is cut short, so no part of a key can cross the cut.
        detail = clipped(self.scrub(str(error.get("message") or text)))
        code = _text(error.get("code"))
        if status == 429:
            return UpstreamFailure(
                f"the provider is rate limiting: {detail}", status=429, retryable=True, retry_after=retry_after(headers)
            )
        if status >= 500:
            return UpstreamFailure(f"the provider failed ({status})", status=status, retryable=True)
        if status in (401, 403, 404) or status < 400 or code in CONFIGURATION_CODES:
            # vary's own credential, deployment, model or URL, not the client's request: a fault of this
            # target. A 404 here is always vary's: the client's model name is never sent upstream.
            said = f", {clipped(self.scrub(code), 100)}" if code else ""
            return UpstreamMisconfigured(
                f"the provider refused vary's credentials or configuration ({status}{said})", status=status
            )
        # Every field the provider sent reaches the client: each scrubbed and bounded.
        return refusal(
            str(error.get("message") or text),
            status=status,
            type=_text(error.get("type")),
            param=_text(error.get("param")),
            code=code,
            secrets=(self.secret(),),
        )

    async def _download(self, url: str) -> bytes:
        """An answer's image, the download retried as the target's own attempts are."""
        options = self.options
        retrying = AsyncRetrying(
            stop=stop_after_attempt(options.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=options.backoff_seconds, max=options.max_backoff_seconds, jitter=options.backoff_seconds
            ),
            retry=retry_if_exception(lambda error: isinstance(error, UpstreamFailure) and error.kind == "retryable"),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await asyncio.wait_for(self._fetch(url), options.timeout_seconds)
                    except asyncio.TimeoutError:
                        # Never out of make() as a timeout: the gateway would read it as the attempt's own.
                        raise UpstreamFailure("an image URL did not answer in time", retryable=True) from None
        except UpstreamFailure as exc:
            raise UpstreamFailure(f"re-hosting the provider's image failed: {exc.message}") from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _fetch(self, url: str) -> bytes:
        async def read(response: httpx.Response) -> bytes:
            if response.status_code != 200:
                retryable = response.status_code >= 500 or response.status_code == 429
                raise UpstreamFailure(f"an image URL answered {response.status_code}", retryable=retryable)
            return await read_capped(response, MAX_IMAGE_BYTES, "an image URL", retryable=False)

        try:
            return await self.downloads.get(url, read)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"downloading an image failed ({type(exc).__name__})", retryable=True) from None


def _items_of(body: bytes, n: int) -> list[Any]:
    """An ImagesResponse's `data`, n items long; blocking (a large answer takes seconds to parse)."""
    try:
        items = json.loads(body)["data"]
        if not isinstance(items, list) or len(items) != n:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise UpstreamFailure("the provider's answer was not an ImagesResponse", retryable=True) from None
    return items


def _decoded(encoded: list[str], size: int) -> list[bytes]:
    """base64 images as PNGs of `size`; blocking."""
    try:
        answers = [pybase64.b64decode(text, validate=True) for text in encoded]
    except ValueError:
        raise UpstreamFailure("the provider's base64 was corrupt", retryable=True) from None
    return pngs_of_size(answers, size, True)


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _answer_limit(n: int) -> int:
    """The most an ImagesResponse of n images may weigh: n base64 images at the cap, and room for the JSON."""
    return n * (MAX_IMAGE_BYTES // 3 + 1) * 4 + 64 * 1024


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
