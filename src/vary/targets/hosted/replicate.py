"""Replicate's predictions API as a Target: FLUX.1 Redux as Black Forest Labs publish it there
(black-forest-labs/flux-redux-schnell by default, or black-forest-labs/flux-redux-dev).

The protocol, as Replicate documents it (the key as `Authorization: Bearer ...`):
- create: POST {base_url}/models/{owner}/{name}/predictions with {"input": {...}} and `Prefer: wait=N`,
  which holds the answer up to N seconds (1 to 60) for the prediction to end. vary waits at most half
  of the attempt's time left, so the answer, and with it the prediction's id and its `urls`, always
  comes back in time; then it polls `urls.get` every `poll_interval_seconds`;
- a prediction ends `succeeded` (its `output`: a list of result URLs on replicate.delivery),
  `failed` (its `error`) or `canceled`; `urls.cancel` (POST) cancels one, sent when vary gives up.
Errors are RFC 7807 problem details ({"title", "detail", "status"}, and `invalid_fields` on a 422).

What vary maps:
- n: Replicate's FLUX Redux makes 1 to 4 images a prediction (`num_outputs`): n above 4 is split (split.py).
- size: `aspect_ratio` 1:1 with `megapixels` 0.25 (512 px) for 256 and 512, or 1 (1024 px) for 1024;
  then resized to exactly the asked size.
- seed: call k sends (seed + k) mod 2^32. steps: `num_inference_steps`, clamped to the model's range
  (schnell 1 to 4, dev 1 to 50). guidance_scale: `guidance` (0 to 10) on dev; schnell has none.
  strength: Redux has no img2img path, so strength below 1 is refused before the call.
- The input goes as a data URI in `redux_image`, never through Replicate's file upload.
- Replicate's safety checker drops a flagged image from `output`, and fails the prediction ("NSFW
  content") when it flags them all: vary reads either as content_policy_violation.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from vary.controls import Capabilities
from vary.errors import ContentFlagged, UpstreamFailure
from vary.request import Part, VariationRequest
from vary.targets.hosted.jobs import JobCall, JobOptions, JobProvider, clamped, data_uri
from vary.targets.hosted.provider import Lifecycle
from vary.targets.hosted.registry import register_provider

REPLICATE_API_URL = "https://api.replicate.com/v1"
REDUX_SCHNELL = "black-forest-labs/flux-redux-schnell"
_MODEL = re.compile(r"[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*", re.IGNORECASE)
OUTPUT_FORMATS = ("png", "webp", "jpg")
MAX_WAIT_SECONDS = 60  # Replicate holds a create for at most this long
RUNNING = ("starting", "processing")


@dataclass(frozen=True)
class ReplicateOptions(JobOptions):
    upstream_model: str = REDUX_SCHNELL  # owner/name of an official model
    disable_safety_checker: bool = False  # Replicate's own NSFW check (its drops are content_policy_violation)
    output_format: str = "png"  # or "webp", "jpg": made a PNG by vary

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _MODEL.fullmatch(self.upstream_model):
            raise ValueError(f"upstream_model must be a Replicate model's owner/name, such as {REDUX_SCHNELL!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")


@dataclass(frozen=True)
class Knobs:
    steps: tuple[int, int]
    guidance: tuple[float, float] | None

    @classmethod
    def of(cls, model: str) -> Knobs:
        # FLUX.1 [schnell] is distilled to a few steps and has no guidance; dev has both.
        if "schnell" in model:
            return cls(steps=(1, 4), guidance=None)
        return cls(steps=(1, 50), guidance=(0.0, 10.0))


def megapixels(size: int) -> str:
    """Replicate's size nearest to (and not below) the asked side, at 1:1: 512 or 1024 px."""
    return "0.25" if size <= 512 else "1"


@register_provider
class Replicate(JobProvider):
    """FLUX.1 Redux through Replicate's predictions."""

    engines = ("replicate",)
    options_type = ReplicateOptions
    owned_by = "replicate"
    lifecycle = {"replicate": Lifecycle("live", note="FLUX.1 Redux on Replicate's predictions API")}
    default_base_url = REPLICATE_API_URL
    default_api_key_env = "REPLICATE_API_TOKEN"
    per_call = 4
    api_hosts = ("api.replicate.com",)
    result_hosts = ("replicate.delivery", "*.replicate.delivery")
    params = {"redux_image": "image", "seed": "seed", "num_inference_steps": "steps", "guidance": "guidance_scale"}
    options: ReplicateOptions

    @property
    def knobs(self) -> Knobs:
        return Knobs.of(self.options.upstream_model)

    def describe(self) -> str:
        return f"FLUX.1 Redux on Replicate ({self.options.upstream_model})"

    def capabilities(self) -> Capabilities:
        guidance = self.knobs.guidance is not None
        return Capabilities(guidance_scale=guidance, img2img=False, max_images=1, image_weights=False)

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def body(self, request: VariationRequest, part: Part) -> dict[str, Any]:
        options, knobs, controls = self.options, self.knobs, request.controls
        given: dict[str, Any] = {
            "redux_image": data_uri(request.images[0].data),
            "num_outputs": part.images,
            "aspect_ratio": "1:1",
            "megapixels": megapixels(request.size),
            "seed": part.seed,
            "output_format": options.output_format,
            "disable_safety_checker": options.disable_safety_checker,
        }
        if controls.steps is not None:
            given["num_inference_steps"] = int(clamped(controls.steps, *knobs.steps))
        if controls.guidance_scale is not None and knobs.guidance is not None:
            given["guidance"] = clamped(controls.guidance_scale, *knobs.guidance)
        return {"input": given}

    async def job(self, call: JobCall) -> list[str]:
        key = call.key
        url = f"{(self.base_url or REPLICATE_API_URL).rstrip('/')}/models/{self.options.upstream_model}/predictions"
        # Half the time left at most, so the answer (and the prediction's id) always comes back in time.
        wait = min(MAX_WAIT_SECONDS, int(call.left() / 2))
        headers = {"Prefer": f"wait={wait}"} if wait >= 1 else {}
        prediction = await self.submit(url, key, self.body(call.request, call.part), _cancel_of, headers=headers)
        links = _links(prediction)
        async with self.held(key, ("POST", links["cancel"])):
            while _status(prediction) in RUNNING:
                await asyncio.sleep(self.options.poll_interval_seconds)
                _, prediction = await self.call("GET", links["get"], key)
        return self.outputs(prediction, call.part)

    def outputs(self, prediction: dict[str, Any], part: Part) -> list[str]:
        """A prediction that ended: its result URLs, or what its end means."""
        status = _status(prediction)
        if status == "failed":
            error = str(prediction.get("error") or "")
            if "nsfw" in error.lower():
                return self._flagged(f"Replicate: {error[:120]}", 0)
            raise UpstreamFailure("the prediction failed at Replicate", retryable=True)
        if status != "succeeded":
            raise UpstreamFailure(f"the prediction ended {status!r} at Replicate", retryable=True)
        output = prediction.get("output")
        if not isinstance(output, list) or not all(isinstance(url, str) for url in output) or len(output) > part.images:
            raise UpstreamFailure("Replicate's output was not a list of result URLs", retryable=True)
        if len(output) < part.images and not self.options.disable_safety_checker:
            # The safety checker dropped the images it flagged; the others were made, and billed.
            return self._flagged(f"Replicate's safety checker dropped {part.images - len(output)} images", len(output))
        return [str(url) for url in output]

    def _flagged(self, audit: str, billed: int) -> list[str]:
        refused = ContentFlagged("output", audit)
        refused.unused_images = billed
        raise refused

    def detail_of(self, body: bytes) -> tuple[str, str | None]:
        """A problem details answer: its `detail` (or `title`), and the input field its `invalid_fields` name."""
        try:
            problem = json.loads(body)
        except ValueError:
            return body.decode("utf-8", "replace"), None
        if not isinstance(problem, dict):
            return str(problem), None
        words = str(problem.get("detail") or problem.get("title") or "")
        fields = problem.get("invalid_fields")
        first = fields[0] if isinstance(fields, list) and fields and isinstance(fields[0], dict) else {}
        name = str(first.get("field", "")).removeprefix("input.")
        return words, self.params.get(name)


def _links(prediction: Any) -> dict[str, str]:
    """A prediction's `urls`: where to poll it and where to cancel it."""
    links = prediction.get("urls") if isinstance(prediction, dict) else None
    if not isinstance(links, dict) or not all(isinstance(links.get(name), str) for name in ("get", "cancel")):
        raise UpstreamFailure("Replicate's answer was not a prediction", retryable=True)
    return {"get": str(links["get"]), "cancel": str(links["cancel"])}


def _cancel_of(prediction: Any) -> tuple[str, str]:
    return "POST", _links(prediction)["cancel"]


def _status(prediction: Any) -> str:
    status = prediction.get("status") if isinstance(prediction, dict) else None
    if not isinstance(status, str):
        raise UpstreamFailure("Replicate's answer was not a prediction", retryable=True)
    return status
