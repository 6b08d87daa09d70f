"""Wire models, named as in OpenAI's OpenAPI document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pybase64
from pydantic import BaseModel, ConfigDict, Field

from vary.controls import MAX_GUIDANCE_SCALE, MAX_SEED
from vary.request import MAX_N, SIDES

SIZES = tuple(f"{side}x{side}" for side in SIDES)


class CreateImageVariationRequest(BaseModel):
    """The multipart form, as documentation: vary reads the form itself (see variation_form.py)."""

    image: bytes = Field(
        description=(
            "The image to use as the basis for the variation(s). Must be a valid PNG file, less than 4MB, and square. "
            "vary: up to five images, as `image[]` parts or repeated `image` parts, are blended (see image_weights)."
        ),
        json_schema_extra={"type": "string", "format": "binary"},
    )
    model: str | None = Field(
        default="dall-e-2",
        description="The model to use. `dall-e-2` names the model vary serves by default; see GET /v1/models.",
    )
    n: int | None = Field(
        default=1, ge=1, le=MAX_N, description="The number of images to generate. Must be between 1 and 10."
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default="url",
        description="The format in which the generated images are returned. URLs are valid for 60 minutes by default.",
    )
    size: Literal["256x256", "512x512", "1024x1024"] | None = Field(
        default="1024x1024", description="The size of the generated images."
    )
    user: str | None = Field(default=None, description="A unique identifier representing your end-user.")
    # vary's controls, beyond OpenAI's contract (the openai SDK sends them with `extra_body`).
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="vary: the same seed and request give the same images on the same machine and model. "
        "The seed used is returned in the x-vary-seed header.",
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="vary: how far from the input. 1 (default) is a pure image-embedding variation; lower keeps "
        "the input's composition through img2img, on models that have it.",
    )
    steps: int | None = Field(
        default=None, ge=1, description="vary: denoising steps (default: the model's; capped by the server)."
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=MAX_GUIDANCE_SCALE,
        description="vary: classifier-free guidance scale (default: the model's).",
    )
    image_weights: str | None = Field(
        default=None,
        description="vary: with several images, one non-negative weight per image, comma-separated, not all zero "
        "(relative: 3,1 is 0.75,0.25). Default: equal.",
        examples=["0.7,0.3"],
    )

    @classmethod
    def request_body(cls) -> dict[str, Any]:
        schema = cls.model_json_schema()
        schema["required"] = ["image"]
        return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


class Image(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[Image]

    @classmethod
    def render(cls, created: int, pngs: Sequence[bytes], urls: Sequence[str]) -> bytes:
        """The JSON answer, from this model: only the field each image has, as OpenAI sends it.

        pydantic writes everything but the base64 images, which stand in as a placeholder and are joined in
        afterwards: its JSON writer checks a string for escapes character by character (about 3 ms a MB,
        30 MB for ten 1024 px images), and base64 has nothing to escape (bench/response.py measures both).
        """
        images = [Image.model_construct(b64_json=_PLACEHOLDER) for _ in pngs]
        images += [Image.model_construct(url=url) for url in urls]
        answer = cls.model_construct(created=created, data=images)
        rendered = answer.__pydantic_serializer__.to_json(answer, exclude_none=True)
        if not pngs:
            return rendered
        parts = rendered.split(_RENDERED_PLACEHOLDER)
        joined = [parts[0]]
        for png, part in zip(pngs, parts[1:], strict=True):
            joined += [b'"', pybase64.b64encode(png), b'"', part]
        return b"".join(joined)


# A string no value of vary's holds (URLs never carry a NUL), and how pydantic writes it.
_PLACEHOLDER = "\x00"
_RENDERED_PLACEHOLDER = b'"\\u0000"'


class Error(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: Error


class ControlRange(BaseModel):
    """A control's default and bounds for one model, so a client can offer it (the playground does)."""

    default: float | int | None  # None: chosen per request (the seed: random, returned in x-vary-seed)
    minimum: float | int
    maximum: float | int
    exclusive_minimum: bool = False  # the value must be above `minimum`, not equal to it


class ModelControls(BaseModel):
    """What the model does with each control, as it declares it: a range it honours, or null where it ignores
    the control (a request may still send it). Strength is null where the model has no img2img path: then
    only 1 is accepted."""

    seed: ControlRange | None
    steps: ControlRange | None
    guidance_scale: ControlRange | None
    strength: ControlRange | None
    max_images: int = Field(description="the input images a request may blend; more are refused")
    image_weights: bool = Field(description="whether unequal image_weights are honoured; refused where not")


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # vary's additions, in vLLM's style: what the model is, and which model an alias stands for.
    root: str
    parent: str | None = None
    description: str
    license: str
    # What the model does with a request's controls, with its defaults where it has them.
    controls: ModelControls


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def _errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": text} for status, text in described.items()}


# What any authenticated route can answer, and what the variations route adds.
ERROR_RESPONSES = _errors({401: "Missing, wrong or revoked API key", 404: "Unknown model", 500: "Server error"})
VARIATION_ERRORS = ERROR_RESPONSES | _errors(
    {
        400: "A field breaks a rule (param names it)",
        408: "The body did not arrive in time",
        413: "Request body too large",
        429: "A rate limit, the quota, or a full queue; retry after the Retry-After header's seconds",
        502: "Every hosted provider of the model failed",
        503: "The model could not be loaded, or the server is shutting down",
    }
)
