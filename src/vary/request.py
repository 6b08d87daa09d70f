"""The service's own request type: a validated variation request, with no HTTP in it."""

from __future__ import annotations

from dataclasses import dataclass

from vary.controls import RequestedControls
from vary.imaging import InputImage

RESPONSE_FORMATS = ("url", "b64_json")
SIDES = (256, 512, 1024)
MAX_N = 10


@dataclass(frozen=True)
class VariationRequest:
    """What the edge has checked: every field within OpenAI's rules. The image is checked when decoded."""

    image: InputImage
    n: int
    size: int  # the side in pixels; every size is square
    response_format: str = "url"
    model: str | None = None  # None: the default model
    user: str | None = None
    controls: RequestedControls = RequestedControls()
