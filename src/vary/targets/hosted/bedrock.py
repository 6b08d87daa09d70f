"""Amazon Bedrock's Nova Canvas IMAGE_VARIATION as a Target: the hosted model that still makes variations.

The call goes through boto3's `bedrock-runtime` client, so SigV4 signing, regions and the credential
chain (environment, profile, instance role) are AWS's own. Retries are not: botocore makes one
attempt per call and the gateway does all retrying, as for every provider, so each call to Nova is
an attempt in the usage row and `targets_tried`, and a bad 200 answer (wrong count, unreadable
image) is retried like any retryable failure. `timeout_seconds` bounds one attempt's whole answer,
not each network read: a late call is abandoned and its read interrupted (the socket shut down for
reading, from the event loop, which never waits for the thread: answers.run_interruptible).

What vary maps:
- n: Nova Canvas makes at most 5 images a call, so n above 5 is split into two calls (split.py, as
  for every provider). When one of them fails, the images of the other (already billed) are kept and
  the next attempt asks only for the rest; the client gets all n or an error.
- size: Nova renders 320 to 4096 px in multiples of 16; 256 is rendered at 320 and resized.
- strength: vary's 1 is furthest from the input, Nova's `similarityStrength` (0.2 to 1.0) runs the
  other way, so similarityStrength = 1 - 0.8 x strength (strength 1 -> 0.2, strength near 0 -> 1.0).
  Without `strength` in the request, the model's `similarity_strength` option (default 0.7) is sent.
- several images: Nova blends up to 5 inputs itself, with equal weight, so unequal `image_weights`
  are refused before the call.
- seed: Nova takes 0 to 2147483646 (2^31 - 2), vary 0 to 2^63 - 1: call k of a request sends
  (seed + k) mod 2147483647. The x-vary-seed header reports the seed call 0 sent, so a repeat with
  it sends exactly the same calls.
- guidance_scale: sent as `cfgScale` (Nova takes 1.1 to 10).
The answers are base64 PNGs, resized to the asked size and then stored and signed by vary like any.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import pybase64
from starlette.concurrency import run_in_threadpool

from vary.controls import Capabilities
from vary.echo import clipped
from vary.errors import UpstreamFailure, UpstreamRefused
from vary.request import Part, VariationRequest
from vary.targets.base import Made
from vary.targets.hosted.answers import Interruptible, pngs_of_size, refusal, run_interruptible
from vary.targets.hosted.provider import HostedOptions, HostedProvider, Lifecycle
from vary.targets.hosted.registry import register_provider
from vary.targets.hosted.split import Split

BEDROCK_PROVIDER = "bedrock-nova-canvas"
NOVA_CANVAS = "amazon.nova-canvas-v1:0"
TITAN_IMAGE_GENERATOR = "amazon.titan-image-generator"
MAX_IMAGES_PER_CALL = 5
MIN_SIDE, MAX_SIDE, SIDE_STEP = 320, 4096, 16
MAX_SEED = 2147483646
# Two calls at most (n is at most 10), both at once.
NOVA_SPLIT = Split(per_call=MAX_IMAGES_PER_CALL, seeds=MAX_SEED + 1, concurrency=2)
# The worker threads Nova's blocking calls run on, for all requests together: never the server's shared ones.
MAX_THREADS = 64


@dataclass(frozen=True)
class BedrockOptions(HostedOptions):
    # base_url None: AWS's own endpoint for the region; set it for a VPC endpoint, a proxy or a test double.
    # Credentials come from AWS's own chain (environment, profile, instance role), never api_key_env.
    region: str = "us-east-1"
    endpoint_url: str | None = None  # the old name of base_url, still read
    model_id: str = NOVA_CANVAS
    # Nova's similarityStrength when the request gives no strength: 0.2 (loose) to 1.0 (close).
    similarity_strength: float = 0.7
    # An optional text prompt for the variation, and what to avoid.
    prompt: str | None = None
    negative_prompt: str | None = None
    quality: str = "standard"  # or "premium"
    cfg_scale: float | None = None  # None: Nova's default (6.5), unless the request gives guidance_scale

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.2 <= self.similarity_strength <= 1.0:
            raise ValueError("similarity_strength must be between 0.2 and 1.0")
        if self.quality not in ("standard", "premium"):
            raise ValueError("quality must be standard or premium")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must be an http(s) URL, not {self.endpoint_url!r}")

    @property
    def endpoint(self) -> str | None:
        return self.base_url or self.endpoint_url


def similarity_for(strength: float | None, default: float) -> float:
    """vary's strength (1 = furthest from the input) as Nova's similarityStrength (1 = closest)."""
    if strength is None:
        return default
    return round(min(1.0, max(0.2, 1.0 - 0.8 * strength)), 4)


def render_side(size: int) -> int:
    """The side Nova can make nearest to `size`."""
    side = min(max(size, MIN_SIDE), MAX_SIDE)
    return -(-side // SIDE_STEP) * SIDE_STEP


@register_provider
class BedrockNovaCanvas(HostedProvider):
    """Nova Canvas variations through boto3; a Target, and closed with the other hosted providers."""

    engines = (BEDROCK_PROVIDER,)
    options_type = BedrockOptions
    owned_by = "amazon"
    options: BedrockOptions
    lifecycle = {
        BEDROCK_PROVIDER: Lifecycle(
            "legacy", datetime.date(2026, 9, 30), "AWS's model lifecycle lists Nova Canvas as legacy"
        )
    }

    @classmethod
    def lifecycle_of(cls, engine: str, options: HostedOptions) -> Lifecycle:
        # The same IMAGE_VARIATION body reaches Titan Image Generator, whose model id an operator may give.
        model_id = options.model_id if isinstance(options, BedrockOptions) else NOVA_CANVAS
        if model_id.startswith(TITAN_IMAGE_GENERATOR):
            return Lifecycle("retired", datetime.date(2026, 6, 30), "Amazon's end of life for Titan Image Generator v2")
        return super().lifecycle_of(engine, options)

    def _open(self) -> None:
        import boto3  # an optional extra: pip install "vary[bedrock]"
        from botocore.config import Config

        options = self.options
        config = Config(
            region_name=options.region,
            connect_timeout=min(10.0, options.timeout_seconds),
            read_timeout=options.timeout_seconds,
            # One attempt: the gateway retries (and counts) every call itself.
            retries={"mode": "standard", "total_max_attempts": 1},
        )
        self._session = boto3.session.Session()
        self.client = self._session.client("bedrock-runtime", endpoint_url=options.endpoint, config=config)
        self._threads = anyio.CapacityLimiter(MAX_THREADS)

    def describe(self) -> str:
        return f"Amazon Nova Canvas ({self.options.model_id}) on Bedrock"

    def capabilities(self) -> Capabilities:
        # Seeds, guidance (cfgScale) and strength (similarityStrength) map; Nova blends up to 5 inputs equally.
        return Capabilities(steps=False, image_weights=False, max_images=MAX_IMAGES_PER_CALL)

    async def aclose(self) -> None:
        # botocore closes its connection pool with locks a worker thread may hold: off the event loop.
        await anyio.to_thread.run_sync(self.client.close, limiter=self._threads)

    async def make(self, request: VariationRequest) -> Made:
        started = time.perf_counter()
        made = await NOVA_SPLIT.make(request, lambda part: self._images(request, part))
        return dataclasses.replace(made, stages={"upstream": time.perf_counter() - started})

    async def _images(self, request: VariationRequest, part: Part) -> Made:
        """One call to Nova: the part's PNGs, of the asked size, checked."""
        answers = await self._call(self._body(request, part.images, part.seed))
        if len(answers) != part.images:
            raise UpstreamFailure("Nova Canvas answered with the wrong number of images", retryable=True)
        return Made(pngs=await run_in_threadpool(pngs_of_size, answers, request.size, True))

    async def _call(self, body: dict[str, Any]) -> list[bytes]:
        """`_invoke` on a worker thread of this provider's own, abandoned when the attempt is cancelled (its time
        is up, or the client left): its read of the answer is interrupted, never waited for (answers.py)."""
        return await run_interruptible(lambda call: self._invoke(body, call), limiter=self._threads)

    def _secrets(self) -> tuple[str | None, ...]:
        """vary's AWS credentials, as the client signs with them, for scrubbing what Bedrock says; blocking."""
        credentials = self._session.get_credentials()
        if credentials is None:
            return ()
        frozen = credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    def _body(self, request: VariationRequest, count: int, seed: int) -> dict[str, Any]:
        options = self.options
        side = render_side(request.size)
        params: dict[str, Any] = {
            "images": [pybase64.b64encode(image.data).decode() for image in request.images],
            "similarityStrength": similarity_for(request.controls.strength, options.similarity_strength),
        }
        if options.prompt:
            params["text"] = options.prompt
        if options.negative_prompt:
            params["negativeText"] = options.negative_prompt
        config: dict[str, Any] = {
            "numberOfImages": count,
            "width": side,
            "height": side,
            "seed": seed,
            "quality": options.quality,
        }
        cfg = request.controls.guidance_scale if request.controls.guidance_scale is not None else options.cfg_scale
        if cfg is not None:
            config["cfgScale"] = min(10.0, max(1.1, cfg))
        return {"taskType": "IMAGE_VARIATION", "imageVariationParams": params, "imageGenerationConfig": config}

    def _invoke(self, body: dict[str, Any], call: Interruptible) -> list[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.invoke_model(
                modelId=self.options.model_id,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
            stream = response["body"]
            try:
                call.reading(functools.partial(_shut_down, stream))
                answer = json.loads(stream.read())
            finally:
                stream.close()  # here, on this thread: closing waits for a read in progress
        except ClientError as exc:
            raise _error_from(exc, self._secrets()) from None
        except BotoCoreError as exc:  # connection, timeout, credentials, an interrupted read
            raise UpstreamFailure(f"the call to Bedrock failed ({type(exc).__name__})", retryable=True) from None
        except ValueError:
            raise UpstreamFailure("Bedrock's answer was not JSON", retryable=True) from None
        if not isinstance(answer, dict) or answer.get("error") or not isinstance(answer.get("images"), list):
            raise UpstreamFailure("Nova Canvas answered with no images", retryable=True)
        try:
            return [pybase64.b64decode(image, validate=True) for image in answer["images"]]
        except (TypeError, ValueError):
            raise UpstreamFailure("Nova Canvas's base64 was corrupt", retryable=True) from None


def _shut_down(stream: Any) -> None:
    """Makes a read of botocore's answer body return now, from any thread, waiting on nothing: its socket is shut
    down for reading (urllib3's HTTPResponse.shutdown). Never close(): that waits for the read in progress."""
    raw = getattr(stream, "_raw_stream", None)  # botocore's StreamingBody wraps urllib3's HTTPResponse
    shutdown = getattr(raw, "shutdown", None)  # urllib3 2.3 and later
    if shutdown is not None:
        shutdown()
        return
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        sock.shutdown(socket.SHUT_RD)


def _error_from(exc: Any, secrets: Sequence[str | None]) -> UpstreamFailure | UpstreamRefused:
    """A botocore ClientError (one attempt) as a domain error; what Bedrock said scrubbed of vary's `secrets`
    (its AWS credentials) and cut short."""
    error = exc.response.get("Error", {})
    code = clipped(str(error.get("Code", "")), 100)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    said = refusal(str(error.get("Message", "")), status=400, type=None, param=None, code=code, secrets=secrets)
    if code in ("ThrottlingException", "TooManyRequestsException", "ServiceQuotaExceededException") or status == 429:
        return UpstreamFailure(f"Bedrock is throttling: {said.message}", status=429, retryable=True)
    if status >= 500 or code in ("ModelNotReadyException", "ModelTimeoutException"):
        return UpstreamFailure(f"Bedrock failed ({status or said.code})", status=status or 503, retryable=True)
    if code == "ValidationException":
        # The request itself (an input Nova refuses, content filters): passed on to the client.
        return UpstreamRefused(
            said.message, status=400, type="invalid_request_error", param=None, code="validation_error"
        )
    # Credentials, access, a missing model: vary's configuration, not the client's request.
    return UpstreamFailure(
        f"Bedrock refused vary's credentials or configuration ({said.code or status})", status=status
    )
