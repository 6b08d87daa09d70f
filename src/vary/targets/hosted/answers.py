"""Reading what a provider answers, the same way for every provider: bodies read within a cap, waits it asks
for, its images checked and made PNGs of the asked size, and its words scrubbed of vary's key."""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

import httpx
import numpy as np

from vary.errors import ImageRejected, UpstreamFailure
from vary.imaging import PNG_MAGIC, ImageRules, MiB, encode_png, fit_to_size, load_provider_image

# One provider image, base64-decoded or downloaded: a 1536 px RGBA PNG is under 10 MiB.
MAX_IMAGE_BYTES = 16 * MiB
# A provider's images go through the checks of an input image (vary.imaging): a PNG, JPEG or WebP,
# square, at most 4096 px a side (so no decompression bomb), read whole.
OUTPUT_RULES = ImageRules(max_bytes=MAX_IMAGE_BYTES, max_side=4096)
MAX_RETRY_AFTER = 86400.0  # a provider's wait beyond a day is read as a day
# What a provider's `url` must look like to be handed on: an absolute http(s) URL, nothing a browser runs.
ABSOLUTE_HTTP_URL = re.compile(r"https?://[^\x00-\x20\x7f/?#@\\]+(?:[/?#][^\x00-\x20\x7f]*)?", re.IGNORECASE)
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}")


def pngs_of_size(answers: list[bytes], size: int, retryable: bool) -> list[bytes]:
    """A provider's images as PNGs of exactly `size` px a side (gpt-image answers at 1024, for one).

    Each is checked as an input image is (vary.imaging): a readable PNG, JPEG or WebP, square, within
    the size limits. A PNG already of the size, 8-bit RGB or RGBA, is passed on as the provider made
    it; anything else (a JPEG or WebP always) is re-encoded as a PNG.
    """
    pngs = []
    for data in answers:
        try:
            image = load_provider_image(data, OUTPUT_RULES)
        except ImageRejected as exc:
            raise UpstreamFailure(
                f"the provider answered with an image vary does not accept ({exc.message})", retryable=retryable
            ) from None
        is_png = data.startswith(PNG_MAGIC)
        bit_depth, colour_type = (data[24], data[25]) if is_png else (0, 0)  # IHDR, checked when loaded
        if is_png and image.size == (size, size) and bit_depth == 8 and colour_type in (2, 6):
            pngs.append(data)
        else:
            pngs.append(encode_png(np.asarray(fit_to_size(image, size))))
    return pngs


async def read_capped(response: httpx.Response, limit: int, what: str, *, retryable: bool = True) -> bytes:
    """A streamed body, refused once it passes `limit` bytes (never read whole first)."""
    chunks, total = [], 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise UpstreamFailure(f"{what} was larger than {limit} bytes", retryable=retryable)
        chunks.append(chunk)
    return b"".join(chunks)


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced wherever it appears: whole, URL-encoded, or escaped in a JSON string."""
    if not secret:
        return text
    encoded = {
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # some encoders escape "/" too
    }
    # Percent-escapes and \u escapes may come in either case.
    forms = {secret} | {_ESCAPE.sub(lambda m: m.group().upper().replace("\\U", "\\u"), f) for f in encoded}
    forms |= {_ESCAPE.sub(lambda m: m.group().lower(), f) for f in encoded}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "[redacted]")
    return text


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI's) or `Retry-After` in seconds or as an HTTP-date."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def _number(value: str | None) -> float | None:
    """A finite wait of 0 to MAX_RETRY_AFTER seconds, or None when `value` is none ("inf" and "nan" are not)."""
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return min(MAX_RETRY_AFTER, max(0.0, number)) if math.isfinite(number) else None
