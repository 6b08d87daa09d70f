"""fal's queue API as a Target: FLUX.1 Redux, a prompt-free variation of one image (fal-ai/flux-1/schnell/redux
by default, or fal-ai/flux-1/dev/redux and the Redux applications that came after them).

The protocol, as fal documents it (the key in `Authorization: Key ...`):
- submit: POST {base_url}/{application} with the input as JSON -> {request_id, status_url,
  response_url, cancel_url};
- status: GET status_url -> {"status": "IN_QUEUE" | "IN_PROGRESS" | "COMPLETED"}, polled every
  `poll_interval_seconds`;
- result: GET response_url -> {"images": [{"url", "width", "height", "content_type"}], "seed",
  "has_nsfw_concepts": [...]}, or the job's error (a 422's `detail`, a 5xx);
- cancel: PUT cancel_url, sent when vary gives up on a job (jobs.py).

What vary maps:
- n: fal makes 1 to 4 images a call (`num_images`), so n above 4 is split into calls (split.py).
- size: fal's square sizes are `square` (512 px) and `square_hd` (1024 px): 256 and 512 are made at
  512, 1024 at 1024, then resized to exactly the asked size.
- seed: call k sends (seed + k) mod 2^32. steps: `num_inference_steps`, clamped to the application's
  range (schnell 1 to 12, dev 1 to 50). guidance_scale: `guidance_scale` (1 to 20) where the
  application has it (dev); schnell has none, so it is ignored there. strength: Redux has no
  img2img path, so strength below 1 is refused before the call.
- The input goes as a data URI in `image_url`, never through fal's upload service.
- fal's safety checker (`enable_safety_checker`, on by default) answers a flagged image black, with
  `has_nsfw_concepts`; vary reads a flag as content_policy_violation, as a 422 of the type
  `content_policy_violation` is. fal answers an exhausted balance with 403: vary's, not the client's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vary.controls import Capabilities
from vary.errors import ContentFlagged, UpstreamFailure
from vary.request import Part, VariationRequest
from vary.targets.hosted.jobs import JobCall, JobOptions, JobProvider, clamped, data_uri
from vary.targets.hosted.provider import Lifecycle
from vary.targets.hosted.registry import register_provider

FAL_QUEUE_URL = "https://queue.fal.run"
SCHNELL_REDUX = "fal-ai/flux-1/schnell/redux"
# An application id: owner/name and, for some, a path under it (fal-ai/flux-1/schnell/redux).
_APPLICATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)+")
OUTPUT_FORMATS = ("png", "jpeg")
CONTENT_POLICY = "content_policy_violation"  # the error type of fal's own content checks


@dataclass(frozen=True)
class FalOptions(JobOptions):
    application: str = SCHNELL_REDUX
    enable_safety_checker: bool = True  # fal's own NSFW check (its flags are content_policy_violation)
    output_format: str = "png"  # or "jpeg", made a PNG by vary

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _APPLICATION.fullmatch(self.application) or ".." in self.application:
            raise ValueError(f"application must be a fal application id such as {SCHNELL_REDUX!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")


@dataclass(frozen=True)
class Knobs:
    """What an application takes besides the image: its steps' range, and its guidance's (None: none)."""

    steps: tuple[int, int]
    guidance: tuple[float, float] | None

    @classmethod
    def of(cls, application: str) -> Knobs:
        # FLUX.1 [schnell] is guidance-distilled: a few steps and no guidance_scale. Dev and later take both.
        if "/schnell/" in f"{application}/":
            return cls(steps=(1, 12), guidance=None)
        return cls(steps=(1, 50), guidance=(1.0, 20.0))


def image_size(size: int) -> str:
    """fal's square size nearest to (and not below) the asked side."""
    return "square" if size <= 512 else "square_hd"


@register_provider
class Fal(JobProvider):
    """FLUX.1 Redux through fal's queue."""

    engines = ("fal",)
    options_type = FalOptions
    owned_by = "fal"
    lifecycle = {"fal": Lifecycle("live", note="FLUX.1 Redux on fal's queue")}
    default_base_url = FAL_QUEUE_URL
    default_api_key_env = "FAL_KEY"
    per_call = 4
    api_hosts = ("queue.fal.run",)
    result_hosts = ("fal.media", "*.fal.media")
    params = {"image_url": "image", "seed": "seed", "num_inference_steps": "steps", "guidance_scale": "guidance_scale"}
    options: FalOptions

    @property
    def knobs(self) -> Knobs:
        return Knobs.of(self.options.application)

    def describe(self) -> str:
        return f"FLUX.1 Redux on fal ({self.options.application})"

    def capabilities(self) -> Capabilities:
        # One image in, no img2img path; steps always, guidance where the application has it.
        guidance = self.knobs.guidance is not None
        return Capabilities(guidance_scale=guidance, img2img=False, max_images=1, image_weights=False)

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Key {key}"}

    def body(self, request: VariationRequest, part: Part) -> dict[str, Any]:
        options, knobs, controls = self.options, self.knobs, request.controls
        body: dict[str, Any] = {
            "image_url": data_uri(request.images[0].data),
            "num_images": part.images,
            "image_size": image_size(request.size),
            "seed": part.seed,
            "enable_safety_checker": options.enable_safety_checker,
            "output_format": options.output_format,
        }
        if controls.steps is not None:
            body["num_inference_steps"] = int(clamped(controls.steps, *knobs.steps))
        if controls.guidance_scale is not None and knobs.guidance is not None:
            body["guidance_scale"] = clamped(controls.guidance_scale, *knobs.guidance)
        return body

    async def job(self, call: JobCall) -> list[str]:
        key, url = call.key, f"{(self.base_url or FAL_QUEUE_URL).rstrip('/')}/{self.options.application}"
        submitted = await self.submit(url, key, self.body(call.request, call.part), _cancel_of)
        status_url, response_url = _text(submitted, "status_url"), _text(submitted, "response_url")
        cancel_url = _text(submitted, "cancel_url")
        async with self.held(key, ("PUT", cancel_url)):
            while True:
                _, status = await self.call("GET", status_url, key)
                state = status.get("status") if isinstance(status, dict) else None
                if state == "COMPLETED":
                    break
                if state not in ("IN_QUEUE", "IN_PROGRESS"):
                    raise UpstreamFailure("fal answered a status it does not document", retryable=True)
                await asyncio.sleep(self.options.poll_interval_seconds)
        _, result = await self.call("GET", response_url, key)  # the job's error, if it failed
        return self.result_urls(result, call.part)

    def result_urls(self, result: Any, part: Part) -> list[str]:
        images = result.get("images") if isinstance(result, dict) else None
        if not isinstance(images, list) or not all(
            isinstance(i, dict) and isinstance(i.get("url"), str) for i in images
        ):
            raise UpstreamFailure("fal's result had no images", retryable=True)
        flags = result.get("has_nsfw_concepts") or []
        flagged = sum(1 for flag in flags if flag is True) if isinstance(flags, list) else 0
        if flagged:
            refused = ContentFlagged("output", f"fal flagged {flagged} of {len(images)} images (has_nsfw_concepts)")
            refused.unused_images = len(images)  # made and billed: fal answers a flagged one black
            raise refused
        return [str(image["url"]) for image in images]

    def moderation(self, status: int, body: bytes) -> ContentFlagged | None:
        """A 422 whose error type is fal's content check: the input's, when it names the image."""
        for item in _detail_items(body):
            if item.get("type") == CONTENT_POLICY:
                stage = "input" if "image_url" in (item.get("loc") or ()) else "output"
                return ContentFlagged(stage, f"fal: {CONTENT_POLICY} ({str(item.get('msg', ''))[:120]})")
        return None


def _cancel_of(submitted: Any) -> tuple[str, str]:
    return "PUT", _text(submitted, "cancel_url")


def _text(answer: Any, name: str) -> str:
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, str):
        raise UpstreamFailure(f"fal's answer had no {name}", retryable=True)
    return value


def _detail_items(body: bytes) -> list[Mapping[str, Any]]:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return []
    return [item for item in detail if isinstance(item, dict)] if isinstance(detail, list) else []
