"""Hosted providers as Targets: another OpenAI-compatible server, Azure OpenAI, and OpenAI's gpt-image edits.

One call of `make` is one attempt: a multipart request rebuilt from the validated request (never the
client's body forwarded), and its answer read into PNGs of the asked size, or a domain error whose
kind says whether a retry could help: UpstreamFailure (retryable or not) or UpstreamRefused (the
request itself, passed on). Retries, fallbacks and the circuit breaker are the gateway's (gateway.py).

Upstream keys come from environment variables named in the configuration, are sent only to the
configured base URL, and never appear in a response, a log line or an error.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pybase64
from PIL import Image
from starlette.concurrency import run_in_threadpool

from vary.engines.base import ModelInfo
from vary.errors import RequestInvalid, UpstreamFailure, UpstreamRefused
from vary.imaging import encode_png, fit_to_size, to_rgb
from vary.request import VariationRequest
from vary.targets import Made, Resilience

UPSTREAM_ENGINES = ("openai-compatible", "azure-openai", "openai-gpt-image")
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_PROMPT = (
    "Create a variation of this image: keep its subject, composition, palette and style, "
    "and change the details, as an artist's second take on the same picture."
)
# gpt-image edits produce these sizes; the others are resized from 1024x1024 by vary.
GPT_IMAGE_SIZE = "1024x1024"
MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class UpstreamOptions:
    base_url: str = OPENAI_BASE_URL
    # The name of the environment variable that holds the key, never the key itself.
    api_key_env: str | None = None
    # The model name sent upstream; None sends none (OpenAI-compatible) or the engine's default.
    upstream_model: str | None = None
    timeout_seconds: float = 120.0  # one attempt, the whole answer included
    max_attempts: int = 3
    backoff_seconds: float = 0.5  # the first retry's wait; it doubles, with jitter
    max_backoff_seconds: float = 20.0  # also caps a Retry-After
    circuit_failures: int = 5  # failed attempts in a row that open the circuit
    circuit_cooldown_seconds: float = 30.0
    # URL answers: downloaded, stored and signed by vary (its expiry, its host), or handed on as they are.
    rehost_urls: bool = True
    # Also send vary's controls (seed, strength, steps, guidance_scale): for an upstream that is a vary.
    forward_controls: bool = False
    # azure-openai
    deployment: str | None = None
    api_version: str = "2024-02-01"
    # openai-gpt-image
    prompt: str = DEFAULT_PROMPT
    quality: str | None = None
    description: str = ""

    @classmethod
    def for_engine(cls, engine: str, values: dict[str, Any]) -> UpstreamOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        options = cls(**values)
        if engine == "azure-openai" and not options.deployment:
            raise ValueError(
                "azure-openai needs options.deployment (and base_url = https://<resource>.openai.azure.com)"
            )
        if options.max_attempts < 1 or options.timeout_seconds <= 0:
            raise ValueError("max_attempts must be at least 1 and timeout_seconds above 0")
        if not options.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {options.base_url!r}")
        return options


class UpstreamEngine:
    """A hosted provider served under a model name: no weights, no scheduler, an HTTP pool of its own."""

    remote = True

    def __init__(
        self, *, name: str, engine: str, options: UpstreamOptions, license: str | None, description: str | None
    ) -> None:
        self.kind = engine
        self.options = options
        self.info = ModelInfo(
            id=name,
            owned_by="openai" if "openai" in engine else "upstream",
            description=description or options.description or f"{engine} at {options.base_url}",
            license=license or "the provider's terms",
        )
        timeout = httpx.Timeout(options.timeout_seconds, connect=min(10.0, options.timeout_seconds))
        self.client = httpx.AsyncClient(base_url=options.base_url.rstrip("/") + "/", timeout=timeout)
        # Downloads of answer URLs go wherever the provider points, so never with the provider's key.
        self.downloads = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self.resilience = Resilience(
            max_attempts=options.max_attempts,
            timeout_seconds=options.timeout_seconds,
            backoff_seconds=options.backoff_seconds,
            max_backoff_seconds=options.max_backoff_seconds,
            circuit_failures=options.circuit_failures,
            circuit_cooldown_seconds=options.circuit_cooldown_seconds,
        )

    @property
    def name(self) -> str:
        return self.info.id

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.downloads.aclose()

    def secret(self) -> str | None:
        """The key, read from its environment variable at each call (so a rotated key is picked up)."""
        if self.options.api_key_env is None:
            return None
        return os.environ.get(self.options.api_key_env) or None

    def scrub(self, text: str) -> str:
        """`text` without the provider's key in it, for anything that leaves this module."""
        secret = self.secret()
        return text.replace(secret, "[redacted]") if secret else text

    async def make(self, request: VariationRequest) -> Made:
        """One attempt; raises UpstreamFailure or UpstreamRefused."""
        started = time.perf_counter()
        key = self.secret()
        if self.options.api_key_env and key is None:
            raise UpstreamFailure(f"the environment variable {self.options.api_key_env} is not set")
        path, headers, data = self._request(request, key)
        files = self._files(request)
        try:
            response = await self.client.post(path, headers=headers, data=data, files=files)
        except httpx.TimeoutException:
            raise UpstreamFailure("the provider did not answer in time", retryable=True) from None
        except httpx.TransportError as exc:
            raise UpstreamFailure(f"the connection failed ({type(exc).__name__})", retryable=True) from None
        if response.status_code != 200:
            raise self._error_from(response)
        try:
            items = response.json()["data"]
            if not isinstance(items, list) or len(items) != request.n:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise UpstreamFailure("the provider's answer was not an ImagesResponse", retryable=True) from None
        made = await self._images(items, request.size)
        return dataclasses.replace(made, stages={"upstream": time.perf_counter() - started})

    def takes_several_images(self) -> bool:
        """gpt-image edits take `image[]`; an upstream vary takes them with its controls; others take one."""
        return self.kind == "openai-gpt-image" or (self.kind == "openai-compatible" and self.options.forward_controls)

    def _files(self, request: VariationRequest) -> list[tuple[str, tuple[str, bytes, str]]]:
        if len(request.images) == 1:
            return [("image", ("image.png", request.images[0].data, "image/png"))]
        if not self.takes_several_images():
            # Refused before the provider is called (and bills): it would use one image, or refuse them all.
            raise RequestInvalid(
                f"The model '{self.info.id}' takes one input image; {len(request.images)} were given.", param="image"
            )
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
            try:
                answers = [pybase64.b64decode(item["b64_json"], validate=True) for item in items]
            except ValueError:
                raise UpstreamFailure("the provider's base64 was corrupt", retryable=True) from None
        elif all(isinstance(item, dict) and isinstance(item.get("url"), str) for item in items):
            urls = [item["url"] for item in items]
            if not self.options.rehost_urls:
                return Made(urls=urls)
            answers = [await self._download(url) for url in urls]
        else:
            raise UpstreamFailure("the provider's answer had neither b64_json nor url", retryable=True)
        # Read here, inside the attempt: an unreadable image is this target's failure, not the client's.
        return Made(pngs=await run_in_threadpool(_pngs_of_size, answers, size))

    def _error_from(self, response: httpx.Response) -> UpstreamFailure | UpstreamRefused:
        status = response.status_code
        body: dict[str, Any] = {}
        try:
            parsed = response.json()
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                body = parsed["error"]
        except ValueError:
            pass
        # Scrubbed before it is cut short, so no part of a key can cross the cut.
        detail = self.scrub(str(body.get("message") or response.text))[:200]
        if status == 429:
            return UpstreamFailure(
                f"the provider is rate limiting: {detail}", status=429, retryable=True, retry_after=_seconds(response)
            )
        if status >= 500:
            return UpstreamFailure(f"the provider failed ({status})", status=status, retryable=True)
        if status in (401, 403) or status < 400:
            # vary's own credential or configuration, not the client's request: a fault of this target.
            return UpstreamFailure(
                f"the provider refused vary's credentials or configuration ({status})", status=status
            )
        return UpstreamRefused(
            detail,
            status=status,
            type=_text(body.get("type")),
            param=_text(body.get("param")),
            code=_text(body.get("code")),
        )

    async def _download(self, url: str) -> bytes:
        try:
            async with self.downloads.stream("GET", url) as response:
                if response.status_code != 200:
                    raise UpstreamFailure(f"an image URL answered {response.status_code}", retryable=True)
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_DOWNLOAD_BYTES:
                        raise UpstreamFailure("an image URL served more than 32 MB", retryable=False)
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"downloading an image failed ({type(exc).__name__})", retryable=True) from None
        return b"".join(chunks)


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _pngs_of_size(answers: list[bytes], size: int) -> list[bytes]:
    """A provider's images as PNGs of exactly `size` px a side (gpt-image answers at 1024, for one)."""
    pngs = []
    for data in answers:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise UpstreamFailure("the provider answered with an image that is not readable", retryable=True) from None
        if image.format == "PNG" and image.size == (size, size) and image.mode in ("RGB", "RGBA"):
            pngs.append(data)
        else:
            pngs.append(encode_png(np.asarray(fit_to_size(to_rgb(image), size))))
    return pngs


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
