"""Reads and validates the variation form, field by field, in OpenAI's words.

vary parses the multipart body itself rather than through FastAPI's Form() parameters so that
unknown and repeated fields are refused, every message matches OpenAI's, and the parser's limits
(parts, field sizes) are set here. The image's PNG checks live in imaging.py.

Several images come as `image[]` parts (what the SDKs send for a list) or as repeated `image` parts;
they are the one field that may repeat. `image_weights` blends them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, overload

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from vary.api.errors import ApiError, invalid
from vary.api.protocol import SIZES
from vary.controls import MAX_GUIDANCE_SCALE, MAX_SEED, RequestedControls
from vary.imaging import ImageRules, InputImage
from vary.request import MAX_IMAGES, MAX_N, RESPONSE_FORMATS, VariationRequest

_N = TypeVar("_N", int, float)

# OpenAI's fields, then vary's optional controls (the openai SDK sends those through `extra_body`).
FIELDS = frozenset({"image", "model", "n", "size", "response_format", "user"})
CONTROLS = frozenset({"seed", "strength", "steps", "guidance_scale", "image_weights"})
IMAGE_PARTS = ("image", "image[]")
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
# Finite decimals only: Python's float() would also take "nan", "inf" and "1_0".
_NUMBER = re.compile(r"[+-]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?")
# Generous bounds for the parser: a valid form has at most sixteen parts, none but the images large.
MAX_PARTS = 32
MAX_FIELD_BYTES = 16 * 1024


@dataclass(frozen=True)
class VariationForm:
    images: tuple[bytes, ...]
    model: str | None
    n: int
    size: int  # the side in pixels; every size is square
    size_label: str
    response_format: str
    user: str | None
    controls: RequestedControls = RequestedControls()
    weights: tuple[float, ...] = ()

    def to_request(self) -> VariationRequest:
        """The service's request: the form's checked fields, with no HTTP in them."""
        return VariationRequest(
            images=tuple(InputImage(data) for data in self.images),
            n=self.n,
            size=self.size,
            response_format=self.response_format,
            model=self.model,
            user=self.user,
            controls=self.controls,
            weights=self.weights,
        )


async def read_variation_form(request: Request, *, max_user_chars: int, max_steps: int) -> VariationForm:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = _clip(content_type.split(";", 1)[0].strip()) or "none"
        raise invalid(
            f"Invalid Content-Type header ({shown}); this endpoint expects multipart/form-data.",
            code="invalid_content_type",
        )
    form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS, max_part_size=MAX_FIELD_BYTES)
    try:
        return await _validate(form, max_user_chars=max_user_chars, max_steps=max_steps)
    finally:
        await form.close()


async def _validate(form: FormData, *, max_user_chars: int, max_steps: int) -> VariationForm:
    seen: set[str] = set()
    images: list[UploadFile | str] = []
    for name, value in form.multi_items():
        if name in IMAGE_PARTS:
            images.append(value)
            continue
        if name not in FIELDS and name not in CONTROLS:
            raise invalid(f"Unrecognized request argument supplied: {_clip(name)}")
        if name in seen:
            raise invalid(f"Duplicate parameter: '{name}' was given more than once.", param=name)
        seen.add(name)

    if not images:
        raise invalid("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if len(images) > MAX_IMAGES:
        raise invalid(f"Too many images: {len(images)} were given; the most is {MAX_IMAGES}.", param="image")
    uploads = [image for image in images if isinstance(image, UploadFile)]
    if len(uploads) != len(images):
        raise invalid("'image' must be a file upload (multipart/form-data with a filename).", param="image")
    weights = _weights(_text(form, "image_weights"), len(uploads))

    model = _text(form, "model")
    n = _integer(_text(form, "n"), "n", 1, MAX_N, default=1)
    size_label = _one_of(_text(form, "size"), "size", SIZES, default="1024x1024")
    response_format = _one_of(_text(form, "response_format"), "response_format", RESPONSE_FORMATS, default="url")
    user = _text(form, "user")
    if user is not None and len(user) > max_user_chars:
        raise invalid(f"'user' is longer than {max_user_chars} characters.", param="user")

    controls = RequestedControls(
        seed=_integer(_text(form, "seed"), "seed", 0, MAX_SEED),
        strength=_number(_text(form, "strength"), "strength", 0.0, 1.0, exclusive_minimum=True),
        steps=_integer(_text(form, "steps"), "steps", 1, max_steps),
        guidance_scale=_number(_text(form, "guidance_scale"), "guidance_scale", 0.0, MAX_GUIDANCE_SCALE),
    )

    return VariationForm(
        images=tuple([await upload.read() for upload in uploads]),
        model=model,
        n=n,
        size=int(size_label.split("x", 1)[0]),
        size_label=size_label,
        response_format=response_format,
        user=user,
        controls=controls,
        weights=weights,
    )


def _weights(raw: str | None, count: int) -> tuple[float, ...]:
    """`image_weights`: one non-negative number per image, not all zero; absent: equal weights."""
    if raw is None:
        return ()
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) != count:
        raise invalid(
            f"'image_weights' has {len(parts)} value{'s' if len(parts) != 1 else ''} "
            f"for {count} image{'s' if count != 1 else ''}; give one weight per image.",
            param="image_weights",
        )
    weights = []
    for part in parts:
        value = float(part) if _NUMBER.fullmatch(part) else math.nan
        if not math.isfinite(value) or value < 0:
            raise invalid(f"{_quote(part)} is not a non-negative number - 'image_weights'", param="image_weights")
        weights.append(value)
    if not any(weights):
        raise invalid("'image_weights' are all zero; at least one image needs weight.", param="image_weights")
    return tuple(weights)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise invalid(f"'{name}' must be a plain form field, not a file.", param=name)
    return value


@overload
def _integer(raw: str | None, name: str, minimum: int, maximum: int, *, default: int) -> int: ...
@overload
def _integer(raw: str | None, name: str, minimum: int, maximum: int) -> int | None: ...
def _integer(raw: str | None, name: str, minimum: int, maximum: int, *, default: int | None = None) -> int | None:
    """A form integer in the wording of OpenAI's schema errors."""
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise invalid(f"{_quote(raw)} is not of type 'integer' - '{name}'", param=name)
    return _in_range(int(raw), name, minimum, maximum)


def _number(
    raw: str | None, name: str, minimum: float, maximum: float, *, exclusive_minimum: bool = False
) -> float | None:
    if raw is None:
        return None
    value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
    if not math.isfinite(value):  # "1e400" matches the pattern but overflows to inf
        raise invalid(f"{_quote(raw)} is not of type 'number' - '{name}'", param=name)
    if exclusive_minimum and value <= minimum:
        raise invalid(f"{_show(value)} is less than or equal to the minimum of {_show(minimum)} - '{name}'", param=name)
    return _in_range(value, name, minimum, maximum)


def _in_range(value: _N, name: str, minimum: _N, maximum: _N) -> _N:
    if value < minimum:
        raise invalid(f"{_show(value)} is less than the minimum of {_show(minimum)} - '{name}'", param=name)
    if value > maximum:
        raise invalid(f"{_show(value)} is greater than the maximum of {_show(maximum)} - '{name}'", param=name)
    return value


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _one_of(raw: str | None, name: str, allowed: tuple[str, ...], *, default: str) -> str:
    if raw is None:
        return default
    if raw not in allowed:
        raise invalid(f"{_quote(raw)} is not one of {list(allowed)} - '{name}'", param=name)
    return raw


def _quote(value: str) -> str:
    return repr(_clip(value))


def _clip(value: str, limit: int = 64) -> str:
    # Echo enough to recognise the value, never a megabyte of it.
    return value if len(value) <= limit else value[:limit] + "..."


def request_too_large(rules: ImageRules) -> Callable[[int], ApiError]:
    """The body cap's answer, in the image rules' words."""

    def error(limit: int) -> ApiError:
        return ApiError(413, rules.too_large(limit), param="image")

    return error
