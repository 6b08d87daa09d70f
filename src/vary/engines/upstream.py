"""Hosted providers as models: another OpenAI-compatible server, Azure OpenAI, and OpenAI's gpt-image edits.

One call here is one attempt: a multipart request rebuilt from the validated form (never the
client's body forwarded), and its answer read into images or an UpstreamError that says whether a
retry could help. Retries, fallbacks and the circuit breaker are the gateway's (gateway.py).

Upstream keys come from environment variables named in the configuration, are sent only to the
configured base URL, and never appear in a response, a log line or an error.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import httpx
import pybase64

from vary.engines.base import ModelInfo

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


@dataclass(frozen=True)
class UpstreamRequest:
    image: bytes  # the validated square PNG
    n: int
    size: int
    response_format: str
    user: str | None
    controls: dict[str, Any]  # only the ones the client gave


@dataclass(frozen=True)
class UpstreamImages:
    """What came back: PNG bytes (b64_json, or downloaded URLs), or URLs handed on as they are."""

    pngs: list[bytes] | None = None
    urls: list[str] | None = None


class UpstreamError(Exception):
    """One failed attempt. `retryable`: the same target may succeed later (429, 5xx, timeouts, resets).
    `client_error`: the request itself was refused (4xx but 429), so no other target is tried either."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        client_error: bool = False,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.client_error = client_error
        self.retry_after = retry_after
        self.body = body
        self.attempts = 1  # set by the gateway to the attempts made on the target before it gave up


class UpstreamEngine:
    """A hosted provider served under a model name: no weights, no scheduler, an HTTP pool of its own."""

    loaded = True

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

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.downloads.aclose()

    def secret(self) -> str | None:
        """The key, read from its environment variable at each call (so a rotated key is picked up)."""
        if self.options.api_key_env is None:
            return None
        return os.environ.get(self.options.api_key_env) or None

    async def create(self, request: UpstreamRequest) -> UpstreamImages:
        """One attempt; raises UpstreamError."""
        key = self.secret()
        if self.options.api_key_env and key is None:
            raise UpstreamError(f"the environment variable {self.options.api_key_env} is not set")
        path, headers, data = self._request(request, key)
        files = {"image": ("image.png", request.image, "image/png")}
        try:
            response = await self.client.post(path, headers=headers, data=data, files=files)
        except httpx.TimeoutException:
            raise UpstreamError("the provider did not answer in time", retryable=True) from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"the connection failed ({type(exc).__name__})", retryable=True) from None
        if response.status_code != 200:
            raise _error_from(response, self.kind)
        try:
            items = response.json()["data"]
            if not isinstance(items, list) or len(items) != request.n:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("the provider's answer was not an ImagesResponse", retryable=True) from None
        return await self._images(items)

    def _request(self, request: UpstreamRequest, key: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
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
            data |= {name: str(value) for name, value in request.controls.items()}
        return "images/variations", _bearer(key), data

    async def _images(self, items: list[Any]) -> UpstreamImages:
        if all(isinstance(item, dict) and isinstance(item.get("b64_json"), str) for item in items):
            try:
                return UpstreamImages(pngs=[pybase64.b64decode(item["b64_json"], validate=True) for item in items])
            except ValueError:
                raise UpstreamError("the provider's base64 was corrupt", retryable=True) from None
        if not all(isinstance(item, dict) and isinstance(item.get("url"), str) for item in items):
            raise UpstreamError("the provider's answer had neither b64_json nor url", retryable=True)
        urls = [item["url"] for item in items]
        if not self.options.rehost_urls:
            return UpstreamImages(urls=urls)
        return UpstreamImages(pngs=[await self._download(url) for url in urls])

    async def _download(self, url: str) -> bytes:
        try:
            async with self.downloads.stream("GET", url) as response:
                if response.status_code != 200:
                    raise UpstreamError(f"an image URL answered {response.status_code}", retryable=True)
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_DOWNLOAD_BYTES:
                        raise UpstreamError("an image URL served more than 32 MB", retryable=False)
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"downloading an image failed ({type(exc).__name__})", retryable=True) from None
        return b"".join(chunks)


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_from(response: httpx.Response, kind: str) -> UpstreamError:
    status = response.status_code
    body: dict[str, Any] | None = None
    try:
        parsed = response.json()
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            body = parsed["error"]
    except ValueError:
        pass
    detail = str(body.get("message")) if body and body.get("message") else response.text[:200]
    if status == 429:
        return UpstreamError(
            f"the provider is rate limiting: {detail}", status=429, retryable=True, retry_after=_seconds(response)
        )
    if status >= 500:
        return UpstreamError(f"the provider failed ({status})", status=status, retryable=True)
    if status in (401, 403):
        # vary's own credential for the provider, not the client's: a fault of this target, not of the request.
        return UpstreamError(f"the provider refused vary's credentials ({status})", status=status)
    return UpstreamError(detail, status=status, client_error=True, body=body)


def _seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
