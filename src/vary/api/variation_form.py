"""Reads and validates the variation form, field by field, in OpenAI's words.

vary parses the multipart body itself rather than through FastAPI's Form() parameters so that
unknown and repeated fields are refused, every message matches OpenAI's, and the parser's limits
(parts, field sizes) are set here. The image's PNG checks live in imaging.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from vary.api.errors import ApiError, invalid
from vary.api.protocol import MAX_N, RESPONSE_FORMATS, SIZES

FIELDS = frozenset({"image", "model", "n", "size", "response_format", "user"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
# Generous bounds for the parser: a valid form has at most six parts, none but the image large.
MAX_PARTS = 32
MAX_FIELD_BYTES = 16 * 1024


@dataclass(frozen=True)
class VariationForm:
    image: bytes
    model: str | None
    n: int
    size: int  # the side in pixels; every size is square
    size_label: str
    response_format: str
    user: str | None


async def read_variation_form(request: Request, *, max_user_chars: int) -> VariationForm:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = content_type.split(";", 1)[0].strip() or "none"
        raise invalid(
            f"Invalid Content-Type header ({shown}); this endpoint expects multipart/form-data.",
            code="invalid_content_type",
        )
    form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS, max_part_size=MAX_FIELD_BYTES)
    try:
        return await _validate(form, max_user_chars=max_user_chars)
    finally:
        await form.close()


async def _validate(form: FormData, *, max_user_chars: int) -> VariationForm:
    seen: set[str] = set()
    for name, _ in form.multi_items():
        if name not in FIELDS:
            raise invalid(f"Unrecognized request argument supplied: {_clip(name)}")
        if name in seen:
            raise invalid(f"Duplicate parameter: '{name}' was given more than once.", param=name)
        seen.add(name)

    image = form.get("image")
    if image is None:
        raise invalid("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if not isinstance(image, UploadFile):
        raise invalid("'image' must be a file upload (multipart/form-data with a filename).", param="image")

    model = _text(form, "model")
    n = _parse_n(_text(form, "n"))
    size_label = _one_of(_text(form, "size"), "size", SIZES, default="1024x1024")
    response_format = _one_of(_text(form, "response_format"), "response_format", RESPONSE_FORMATS, default="url")
    user = _text(form, "user")
    if user is not None and len(user) > max_user_chars:
        raise invalid(f"'user' is longer than {max_user_chars} characters.", param="user")

    data = await image.read()
    return VariationForm(
        image=data,
        model=model,
        n=n,
        size=int(size_label.split("x", 1)[0]),
        size_label=size_label,
        response_format=response_format,
        user=user,
    )


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise invalid(f"'{name}' must be a plain form field, not a file.", param=name)
    return value


def _parse_n(raw: str | None) -> int:
    if raw is None:
        return 1
    if not _INTEGER.fullmatch(raw):
        raise invalid(f"{_quote(raw)} is not of type 'integer' - 'n'", param="n")
    n = int(raw)
    if n < 1:
        raise invalid(f"{n} is less than the minimum of 1 - 'n'", param="n")
    if n > MAX_N:
        raise invalid(f"{n} is greater than the maximum of {MAX_N} - 'n'", param="n")
    return n


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


def request_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"Request body is larger than {limit} bytes. Uploaded image must be a PNG and less than 4 MB.",
        param="image",
    )
