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
import email.utils
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pybase64
from starlette.concurrency import run_in_threadpool
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from vary.engines.base import ModelInfo
from vary.errors import RequestInvalid, UpstreamFailure, UpstreamMisconfigured, UpstreamRefused
from vary.request import VariationRequest
from vary.targets.base import Made, Resilience
from vary.targets.hosted.common import DEFAULT_DEADLINE_SECONDS, MAX_IMAGE_BYTES, HostedProvider, pngs_of_size

OPENAI_API_PROVIDERS = ("openai-compatible", "azure-openai", "openai-gpt-image")
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_PROMPT = (
    "Create a variation of this image: keep its subject, composition, palette and style, "
    "and change the details, as an artist's second take on the same picture."
)
# gpt-image edits produce these sizes; the others are resized from 1024x1024 by vary.
GPT_IMAGE_SIZE = "1024x1024"
# Error codes that name vary's deployment or upstream model, whatever the status they come with.
CONFIGURATION_CODES = frozenset({"DeploymentNotFound", "model_not_found"})
MAX_RETRY_AFTER = 86400.0  # a provider's wait beyond a day is read as a day


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
    # The model served alone: every attempt and wait within this; a route has its own deadline_seconds.
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
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
        if options.max_attempts < 1 or options.timeout_seconds <= 0 or options.deadline_seconds <= 0:
            raise ValueError("max_attempts must be at least 1, timeout_seconds and deadline_seconds above 0")
        if not options.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {options.base_url!r}")
        return options


class OpenAIApiProvider(HostedProvider):
    """A hosted provider served under a model name: no weights, no scheduler, an HTTP pool of its own."""

    def __init__(
        self, *, name: str, engine: str, options: UpstreamOptions, license: str | None, description: str | None
    ) -> None:
        self.kind = engine
        self.options = options
        self.info = ModelInfo(
            id=name,
            owned_by="openai" if "openai" in engine else "upstream",
            # Never the base URL: which providers vary uses, and where, is not the clients' business.
            description=description or options.description or f"A hosted provider ({engine}).",
            license=license or "the provider's terms",
        )
        timeout = httpx.Timeout(options.timeout_seconds, connect=min(10.0, options.timeout_seconds))
        self.client = httpx.AsyncClient(base_url=options.base_url.rstrip("/") + "/", timeout=timeout)
        # Downloads of answer URLs go wherever the provider points, so never with the provider's key.
        self.downloads = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self.resilience = Resilience(
            max_attempts=options.max_attempts,
            # None: make() times the generation itself, so a slow re-hosting download never
            # makes the gateway ask for (and pay for) the generation again.
            timeout_seconds=None,
            backoff_seconds=options.backoff_seconds,
            max_backoff_seconds=options.max_backoff_seconds,
            circuit_failures=options.circuit_failures,
            circuit_cooldown_seconds=options.circuit_cooldown_seconds,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.downloads.aclose()

    def secret(self) -> str | None:
        """The key, read from its environment variable at each call (so a rotated key is picked up)."""
        if self.options.api_key_env is None:
            return None
        return os.environ.get(self.options.api_key_env) or None

    def scrub(self, text: str) -> str:
        """`text` without the provider's key in it, in any form it can be echoed, for anything that leaves here."""
        secret = self.secret()
        return scrub(text, secret) if secret else text

    async def make(self, request: VariationRequest) -> Made:
        """One attempt; raises UpstreamFailure (or UpstreamMisconfigured) or UpstreamRefused."""
        started = time.perf_counter()
        key = self.secret()
        if self.options.api_key_env and key is None:
            raise UpstreamMisconfigured(f"the environment variable {self.options.api_key_env} is not set")
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
        try:
            items = json.loads(body)["data"]
            if not isinstance(items, list) or len(items) != request.n:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise UpstreamFailure("the provider's answer was not an ImagesResponse", retryable=True) from None
        made = await self._images(items, request.size)
        return dataclasses.replace(made, stages={"upstream": time.perf_counter() - started})

    async def _post(
        self, path: str, headers: dict[str, str], data: dict[str, str], files: list[tuple[str, Any]], limit: int
    ) -> tuple[int, httpx.Headers, bytes]:
        """Status, headers and body, read as it streams in and refused past `limit` bytes."""
        async with self.client.stream("POST", path, headers=headers, data=data, files=files) as response:
            body = await _read_capped(response, limit, "the provider's answer")
            return response.status_code, response.headers, body

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
            if any(len(item["b64_json"]) // 4 * 3 > MAX_IMAGE_BYTES for item in items):
                raise UpstreamFailure(f"the provider's image was larger than {MAX_IMAGE_BYTES} bytes", retryable=True)
            try:
                answers = [pybase64.b64decode(item["b64_json"], validate=True) for item in items]
            except ValueError:
                raise UpstreamFailure("the provider's base64 was corrupt", retryable=True) from None
            # Read here, inside the attempt: an unreadable image is this target's failure, not the client's.
            return Made(pngs=await run_in_threadpool(pngs_of_size, answers, size, True))
        if all(isinstance(item, dict) and isinstance(item.get("url"), str) for item in items):
            urls = [item["url"] for item in items]
            if not self.options.rehost_urls:
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
        detail = self.scrub(str(error.get("message") or text))[:200]
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
            return UpstreamMisconfigured(
                f"the provider refused vary's credentials or configuration ({status}{f', {code}' if code else ''})",
                status=status,
            )
        return UpstreamRefused(
            detail,
            status=status,
            type=_text(error.get("type")),
            param=_text(error.get("param")),
            code=code,
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
        try:
            async with self.downloads.stream("GET", url) as response:
                if response.status_code != 200:
                    retryable = response.status_code >= 500 or response.status_code == 429
                    raise UpstreamFailure(f"an image URL answered {response.status_code}", retryable=retryable)
                return await _read_capped(response, MAX_IMAGE_BYTES, "an image URL", retryable=False)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"downloading an image failed ({type(exc).__name__})", retryable=True) from None


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _read_capped(response: httpx.Response, limit: int, what: str, *, retryable: bool = True) -> bytes:
    chunks, total = [], 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise UpstreamFailure(f"{what} was larger than {limit} bytes", retryable=retryable)
        chunks.append(chunk)
    return b"".join(chunks)


def _answer_limit(n: int) -> int:
    """The most an ImagesResponse of n images may weigh: n base64 images at the cap, and room for the JSON."""
    return n * (MAX_IMAGE_BYTES // 3 + 1) * 4 + 64 * 1024


def scrub(text: str, secret: str) -> str:
    """`text` with `secret` replaced wherever it appears: whole, URL-encoded, or escaped in a JSON string."""
    encoded = {
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # some encoders escape "/" too
    }
    # Percent-escapes and \u escapes may come in either case.
    forms = {secret} | {_ESCAPE.sub(lambda m: m.group().upper().replace("\\U", "\\u"), f) for f in encoded}
    forms |= {_ESCAPE.sub(lambda m: m.group().lower(), f) for f in encoded}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "[redacted]")
    return text


_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI's) or `Retry-After` in seconds or as an HTTP-date."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def _number(value: str | None) -> float | None:
    """A finite wait of 0 to MAX_RETRY_AFTER seconds, or None when `value` is none ("inf" and "nan" are not)."""
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return min(MAX_RETRY_AFTER, max(0.0, number)) if math.isfinite(number) else None
