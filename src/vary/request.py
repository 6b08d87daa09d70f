"""The service's own request type: a validated variation request, with no HTTP in it."""

from __future__ import annotations

from dataclasses import dataclass

from vary.controls import MAX_IMAGES, RequestedControls
from vary.imaging import InputImage

RESPONSE_FORMATS = ("url", "b64_json")
SIDES = (256, 512, 1024)
MAX_N = 10
__all__ = ["MAX_IMAGES", "MAX_N", "RESPONSE_FORMATS", "SIDES", "Part", "VariationRequest"]


@dataclass(frozen=True)
class Part:
    """One call of a request that a provider splits by its images-per-call cap: its images and the seed it sends."""

    images: int
    seed: int


@dataclass(frozen=True)
class VariationRequest:
    """What the edge has checked: every field within OpenAI's rules. The images are checked when decoded.

    Several images are blended by `weights` (one per image, non-negative, not all zero; relative, so
    only their ratios matter). One image is the OpenAI request as it always was.
    """

    images: tuple[InputImage, ...]
    n: int
    size: int  # the side in pixels; every size is square
    response_format: str = "url"
    model: str | None = None  # None: the default model
    user: str | None = None
    controls: RequestedControls = RequestedControls()
    weights: tuple[float, ...] = ()  # empty: equal weights
    # The calls still owed after an attempt that made part of the images (the gateway's next attempt on the
    # same target asks only for these; n is their sum). Empty: the whole request, split by the provider.
    parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.images) <= MAX_IMAGES:
            raise ValueError(f"a request has 1 to {MAX_IMAGES} images, not {len(self.images)}")
        if self.parts and sum(part.images for part in self.parts) != self.n:
            raise ValueError("parts: their images must add up to n")
        if self.weights and (len(self.weights) != len(self.images) or min(self.weights) < 0 or not any(self.weights)):
            raise ValueError("weights: one non-negative number per image, not all zero")

    @property
    def blend(self) -> tuple[float, ...]:
        """The weights normalised to sum to 1."""
        weights = self.weights or (1.0,) * len(self.images)
        total = sum(weights)
        return tuple(w / total for w in weights)
