"""Black Forest Labs' API as a Target: FLUX1.1 [pro] with an image prompt and an empty text prompt, which is
FLUX Redux (flux-pro-1.1 by default; flux-pro-1.1-ultra also takes the image prompt's strength).

The protocol, as BFL documents it (the key in the `x-key` header):
- submit: POST {base_url}/{upstream_model} with {"prompt": "", "image_prompt": <base64>, ...} ->
  {"id", "polling_url"}; the polling URL may name another of BFL's hosts (a region's), and is used
  as it is;
- poll: GET polling_url -> {"status": "Pending" | "Ready" | "Request Moderated" | "Content Moderated" |
  "Error" | "Task not found", "result": {"sample": <URL>}} every `poll_interval_seconds`;
- the result's `sample` is a signed URL on delivery.*.bfl.ai that expires after about ten minutes:
  vary fetches it at once, so `rehost_urls = false` is refused at start. BFL has no cancel: a
  task vary gave up on runs out (and is billed) at BFL.

What vary maps:
- n: one image a task: n tasks, a few at once (`max_concurrent_calls`, split.py); BFL allows a
  limited number of active tasks per account, and answers 429 past it.
- size: flux-pro-1.1 takes `width` and `height` (256 to 1440, multiples of 32): 256, 512 and 1024
  are made as asked. flux-pro-1.1-ultra takes only `aspect_ratio` (1:1, about 4 megapixels): its
  2048 px square is resized to the asked size.
- seed: task k sends (seed + k) mod 2^32. steps and guidance_scale: these models have no such knob,
  so they are ignored. strength (ultra only): vary's 1 is furthest from the input and BFL's
  `image_prompt_strength` (0 to 1) runs the other way: image_prompt_strength = 1 - 0.9 x strength,
  so strength 1 gives BFL's own default, 0.1; without `strength`, the option `image_prompt_strength`
  is sent. flux-pro-1.1 has no such knob: strength below 1 is refused before the call.
- BFL's moderation: "Request Moderated" (the input) and "Content Moderated" (the result) are
  content_policy_violation; BFL does not charge for either.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pybase64

from vary.controls import Capabilities
from vary.errors import ContentFlagged, UpstreamFailure
from vary.request import Part, VariationRequest
from vary.targets.hosted.jobs import JobCall, JobOptions, JobProvider, clamped
from vary.targets.hosted.provider import HostedOptions, Lifecycle
from vary.targets.hosted.registry import register_provider

BFL_API_URL = "https://api.bfl.ai/v1"
FLUX_PRO = "flux-pro-1.1"
_MODEL = re.compile(r"[a-z0-9][a-z0-9.-]*")
OUTPUT_FORMATS = ("png", "jpeg")
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1440, 32
PENDING = ("Pending", "Queued", "Processing")


@dataclass(frozen=True)
class BflOptions(JobOptions):
    upstream_model: str = FLUX_PRO
    safety_tolerance: int = 2  # BFL's moderation: 0 (strictest) to 6
    image_prompt_strength: float = 0.1  # ultra: sent when the request gives no strength
    raw: bool = False  # ultra: less processed, more natural-looking images
    output_format: str = "png"  # or "jpeg", made a PNG by vary

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _MODEL.fullmatch(self.upstream_model):
            raise ValueError(f"upstream_model must be a BFL endpoint name, such as {FLUX_PRO!r}")
        if not 0 <= self.safety_tolerance <= 6:
            raise ValueError("safety_tolerance must be 0 to 6")
        if not 0 <= self.image_prompt_strength <= 1:
            raise ValueError("image_prompt_strength must be between 0 and 1")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")

    @property
    def ultra(self) -> bool:
        """Ultra mode sizes by aspect ratio and takes the image prompt's strength."""
        return self.upstream_model.endswith("-ultra")


def render_side(size: int) -> int:
    """The side flux-pro-1.1 makes nearest to (and not below) `size`."""
    side = min(max(size, MIN_SIDE), MAX_SIDE)
    return -(-side // SIDE_STEP) * SIDE_STEP


def image_prompt_strength(strength: float | None, default: float) -> float:
    """vary's strength (1 = furthest from the input) as BFL's image_prompt_strength (1 = closest)."""
    return default if strength is None else round(clamped(1.0 - 0.9 * strength, 0.0, 1.0), 4)


@register_provider
class BlackForestLabs(JobProvider):
    """FLUX1.1 [pro] with an image prompt, through Black Forest Labs' API."""

    engines = ("bfl",)
    options_type = BflOptions
    owned_by = "black-forest-labs"
    lifecycle = {"bfl": Lifecycle("live", note="FLUX1.1 [pro] image prompts on BFL's API")}
    default_base_url = BFL_API_URL
    default_api_key_env = "BFL_API_KEY"
    per_call = 1
    api_hosts = ("*.bfl.ai",)  # polling URLs name a region's host
    result_hosts = ("*.bfl.ai",)  # delivery.<region>.bfl.ai, whose names change
    params = {"image_prompt": "image", "seed": "seed", "image_prompt_strength": "strength"}
    options: BflOptions

    @classmethod
    def options_for(cls, engine: str, values: Mapping[str, Any]) -> HostedOptions:
        options = BflOptions.of(values)
        if not options.rehost_urls:
            raise ValueError(
                "bfl's result URLs are signed and expire in about ten minutes, so vary downloads them at once: "
                "rehost_urls = false is not possible"
            )
        return options

    def describe(self) -> str:
        return f"FLUX1.1 [pro] image prompts on Black Forest Labs' API ({self.options.upstream_model})"

    def capabilities(self) -> Capabilities:
        # One image prompt; no steps or guidance; strength only where ultra's image_prompt_strength maps it.
        return Capabilities(
            steps=False, guidance_scale=False, img2img=self.options.ultra, max_images=1, image_weights=False
        )

    def auth(self, key: str) -> dict[str, str]:
        return {"x-key": key}

    def body(self, request: VariationRequest, part: Part) -> dict[str, Any]:
        options = self.options
        body: dict[str, Any] = {
            "prompt": "",
            "image_prompt": pybase64.b64encode(request.images[0].data).decode(),
            "seed": part.seed,
            "safety_tolerance": options.safety_tolerance,
            "output_format": options.output_format,
        }
        if options.ultra:
            strength = image_prompt_strength(request.controls.strength, options.image_prompt_strength)
            body |= {"aspect_ratio": "1:1", "image_prompt_strength": strength, "raw": options.raw}
        else:
            body |= {"width": render_side(request.size), "height": render_side(request.size)}
        return body

    async def job(self, call: JobCall) -> list[str]:
        url = f"{(self.base_url or BFL_API_URL).rstrip('/')}/{self.options.upstream_model}"
        task = await self.submit(url, call.key, self.body(call.request, call.part), lambda _: None)  # no cancel
        polling_url = task.get("polling_url") if isinstance(task, dict) else None
        if not isinstance(polling_url, str):
            raise UpstreamFailure("BFL's answer had no polling_url", retryable=True)
        while True:  # BFL has no cancel: a task given up on runs out there
            _, answer = await self.call("GET", polling_url, call.key)
            status = answer.get("status") if isinstance(answer, dict) else None
            if status not in PENDING:
                return [self.sample(answer, status)]
            await asyncio.sleep(self.options.poll_interval_seconds)

    def sample(self, answer: Any, status: object) -> str:
        """A task that ended: its result's signed URL, or what its end means."""
        if status == "Request Moderated":
            raise ContentFlagged("input", "BFL moderated the request (Request Moderated)")
        if status == "Content Moderated":
            raise ContentFlagged("output", "BFL moderated the result (Content Moderated)")
        if status != "Ready":
            raise UpstreamFailure("the task did not succeed at BFL", retryable=True)
        result = answer.get("result")
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str):
            raise UpstreamFailure("BFL's ready task had no sample", retryable=True)
        return sample
