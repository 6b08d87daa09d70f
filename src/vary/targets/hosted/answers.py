"""Reading what a provider answers, the same way for every provider: bodies read within a cap, waits it asks
for, its images checked and made PNGs of the asked size, its words scrubbed of vary's key and cut short, and
a blocking client's call run on a worker thread that the event loop can stop without waiting for it."""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar
from urllib.parse import quote, quote_plus

import anyio.to_thread
import httpx
import numpy as np

from vary.echo import clipped
from vary.errors import ImageRejected, UpstreamFailure, UpstreamRefused
from vary.imaging import PNG_MAGIC, ImageRules, MiB, encode_png, fit_to_size, load_provider_image

# One provider image, base64-decoded or downloaded: a 1536 px RGBA PNG is under 10 MiB.
MAX_IMAGE_BYTES = 16 * MiB
# A provider's images go through the checks of an input image (vary.imaging): a PNG, JPEG or WebP,
# square, at most 4096 px a side (so no decompression bomb), read whole.
OUTPUT_RULES = ImageRules(max_bytes=MAX_IMAGE_BYTES, max_side=4096)
MAX_RETRY_AFTER = 86400.0  # a provider's wait beyond a day is read as a day
# What is read of a provider's error answer: its message is cut to 200 characters anyway.
ERROR_BODY_BYTES = 64 * 1024
# What a provider's `url` must look like to be handed on: an absolute http(s) URL, nothing a browser runs.
ABSOLUTE_HTTP_URL = re.compile(r"https?://[^\x00-\x20\x7f/?#@\\]+(?:[/?#][^\x00-\x20\x7f]*)?", re.IGNORECASE)
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}")
T = TypeVar("T")


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


async def read_start(response: httpx.Response, limit: int) -> bytes:
    """At most the first `limit` bytes of a streamed body (an error's: what it says is in its start)."""
    chunks, total = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: limit - total])
        total += len(chunks[-1])
        if total >= limit:
            break
    return b"".join(chunks)


def scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced wherever it appears: whole, URL-encoded, escaped in a JSON string, base64
    (standard or URL-safe, at any alignment inside a longer value, as in a Basic credential) or hex."""
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
    raw = secret.encode()
    forms |= {raw.hex(), raw.hex().upper(), *_base64_cores(raw)}
    for form in sorted((form for form in forms if len(form) >= MIN_SCRUBBED), key=len, reverse=True):
        text = text.replace(form, "[redacted]")
    return text


# Shorter forms (of a key that short, or a base64 core of it) would redact ordinary words: no key is this short.
MIN_SCRUBBED = 8


def _base64_cores(raw: bytes) -> set[str]:
    """The characters of `raw`'s base64 that depend on `raw` alone, for each of the three byte alignments it may
    have inside a longer encoded value, in the standard and the URL-safe alphabets."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw).decode("ascii").rstrip("=")
        first = -(-8 * offset // 6)  # the first character whose six bits are all the key's
        last = 8 * (offset + len(raw)) // 6  # the characters before it hold only the key's bits (or the prefix's)
        core = encoded[first:last]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def refusal(
    message: str,
    *,
    status: int,
    type: str | None,
    param: str | None,
    code: str | None,
    secrets: Sequence[str | None],
) -> UpstreamRefused:
    """A provider's refusal of the request itself, passed on: every field it sent reaches the client, so each is
    scrubbed of the provider's secrets and cut short (after the scrub, so no part of a key crosses the cut)."""

    def shown(value: str | None) -> str | None:
        if value is None:
            return None
        for secret in secrets:
            value = scrub(value, secret)
        return clipped(value)

    return UpstreamRefused(shown(message) or "", status=status, type=shown(type), param=shown(param), code=shown(code))


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


class Interruptible:
    """How the event loop stops a blocking call on a worker thread without waiting for it.

    The loop never closes a stream that a thread may be reading: closing takes the stream's lock, which the
    reader holds until its read returns, and a read of a whole answer that trickles in returns when the whole
    answer is in (the server stopped answering /healthz for that long). The thread names, with `reading`,
    a way to stop its read that waits on nothing (shutting the socket down for reading: a syscall); the loop
    calls it through `interrupt`, the thread's read returns at once, and the thread closes its stream itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for two assignments, never across I/O
        self._stop: Callable[[], None] | None = None
        self._interrupted = False

    def reading(self, stop: Callable[[], None]) -> None:
        """On the worker thread, before a read that may block: `stop` makes that read return (or fail) now."""
        with self._lock:
            self._stop, interrupted = stop, self._interrupted
        if interrupted:
            _quietly(stop)

    def interrupt(self) -> None:
        """On the event loop: stops the registered read, if any, without waiting for the thread."""
        with self._lock:
            self._interrupted, stop = True, self._stop
        if stop is not None:
            _quietly(stop)


async def run_interruptible(call: Callable[[Interruptible], T], *, limiter: anyio.CapacityLimiter) -> T:
    """`call(interruptible)` on a worker thread of `limiter`'s; when the awaiting task is cancelled (the attempt's
    time is up, the client left, the server stops) the thread is abandoned and its read interrupted, so neither
    the loop nor the task waits for it. `limiter`: the provider's own threads, so its calls never take the
    threads the rest of the server runs its blocking work on."""
    interruptible = Interruptible()
    try:
        return await anyio.to_thread.run_sync(call, interruptible, abandon_on_cancel=True, limiter=limiter)
    except BaseException:
        interruptible.interrupt()
        raise


def _quietly(stop: Callable[[], None]) -> None:
    try:
        stop()
    except (OSError, ValueError, RuntimeError):
        pass  # already closed, or never connected: nothing left to stop
