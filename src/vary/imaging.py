"""The image rules in one place: input PNG checks and decoding, output resizing and PNG encoding.

Cheap checks run on the raw bytes and the PNG header before anything is decoded, so that a
decompression bomb or a non-PNG costs microseconds, not memory. The limits are then checked again on
Pillow's own view of the image, the one it will decode: a PNG with a second IHDR (which Pillow obeys
and the first-chunk read would not see) is refused outright, and any other disagreement is caught there.
Decoding itself is bounded: at most `ImageRules.max_concurrent_decodes` inputs are decoded at once,
whatever the number of requests, and each is at most max_side² pixels.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    import fpng as _fpng
except ImportError:  # pragma: no cover - platforms without an fpng build fall back to Pillow
    _fpng = None

from vary.errors import ImageRejected

MiB = 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 8 + 4 + 4 + 13 + 4  # magic, length, type, IHDR data, CRC
_DECODE_ERRORS = (
    OSError,  # truncated data, bad chunk layout
    SyntaxError,  # Pillow's PNG parser reports broken chunks this way
    ValueError,  # e.g. text chunks beyond Pillow's safety limit
    EOFError,
    struct.error,
    zlib.error,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)
# A chunk is its length, type, data and CRC.
_CHUNK_OVERHEAD = 12
# 16-bit greyscale PNGs decode to one of these 32-bit integer modes holding 0..65535.
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class ImageRules:
    """What an input image may be; the settings fill it in (VARY_MAX_IMAGE_BYTES, VARY_MAX_IMAGE_SIDE)."""

    max_bytes: int = 4 * MiB  # OpenAI's contract: the image must be *less than* 4 MB
    max_side: int = 4096
    max_concurrent_decodes: int = 4

    @property
    def size_phrase(self) -> str:
        """The byte limit as OpenAI words it: "4 MB"."""
        mib, rest = divmod(self.max_bytes, MiB)
        return f"{mib} MB" if mib and not rest else f"{self.max_bytes} bytes"

    @property
    def not_a_png(self) -> str:
        return f"Uploaded image must be a PNG and less than {self.size_phrase}."

    def too_large(self, limit: int) -> str:
        return f"Request body is larger than {limit} bytes. {self.not_a_png}"


def png_dimensions(data: bytes, rules: ImageRules = ImageRules()) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format requires to come first."""
    if len(data) < _IHDR_END or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        raise ImageRejected(rules.not_a_png)
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def check_single_header(data: bytes) -> None:
    """Refuses a PNG whose IHDR chunk is not the only one: Pillow would decode with the last.

    Walks the chunk list by lengths and types alone (no decompression). The walk only runs when the
    bytes "IHDR" occur again past the first chunk at all, which they almost never do by chance.
    """
    if data.find(b"IHDR", _IHDR_END) < 0:
        return
    offset = _IHDR_END
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"IHDR":
            raise ImageRejected("Uploaded image is not a valid PNG: its IHDR chunk must come first and only once.")
        if kind == b"IEND":
            return
        offset += _CHUNK_OVERHEAD + length


def check_dimensions(width: int, height: int, rules: ImageRules) -> None:
    """OpenAI's rules on a size: some pixels, square, at most max_side a side."""
    if width == 0 or height == 0:
        raise ImageRejected("Uploaded image has no pixels.")
    if width != height:
        raise ImageRejected(f"Uploaded image must be square, but it is {width}x{height}.")
    if width > rules.max_side:
        side = rules.max_side
        raise ImageRejected(f"Uploaded image is {width}x{height} pixels; the largest accepted is {side}x{side}.")


def load_variation_input(data: bytes, rules: ImageRules = ImageRules()) -> Image.Image:
    """Checks an uploaded image against OpenAI's rules and returns it as RGB (transparency on white).

    Memory for one image is bounded by max_side² pixels (Pillow's own bomb limit is set to that too).
    """
    return to_rgb(load_checked(data, rules))


def load_checked(data: bytes, rules: ImageRules = ImageRules()) -> Image.Image:
    """Checks an uploaded image against OpenAI's rules and returns it decoded, in its own mode (alpha kept)."""
    if len(data) >= rules.max_bytes:
        raise ImageRejected(rules.not_a_png)
    width, height = png_dimensions(data, rules)
    check_dimensions(width, height, rules)
    check_single_header(data)
    _limit_pillow(rules.max_side * rules.max_side)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.size != (width, height):  # what Pillow will decode is not what the header said
                raise ImageRejected("Uploaded image is not a valid PNG: its header and its decoded size disagree.")
            check_dimensions(*img.size, rules)
            img.load()
            return img
    except Image.DecompressionBombError:
        side = rules.max_side
        raise ImageRejected(f"Uploaded image has more pixels than the largest accepted, {side}x{side}.") from None
    except _DECODE_ERRORS:
        raise ImageRejected("Uploaded image is not a valid PNG: it is truncated or corrupt.") from None


# What a provider may answer in besides PNG (gpt-image's output_format, gateways that transcode).
PROVIDER_FORMATS = ("JPEG", "WEBP")


def load_provider_image(data: bytes, rules: ImageRules) -> Image.Image:
    """A provider's image as RGB: a PNG under an input's rules, or a JPEG or WebP under the same limits
    (bytes, square, max_side, Pillow's bomb limit), its size read from the header before any decode."""
    if data.startswith(PNG_MAGIC):
        return load_variation_input(data, rules)
    if len(data) >= rules.max_bytes:
        raise ImageRejected(f"The image is larger than {rules.size_phrase}.")
    _limit_pillow(rules.max_side * rules.max_side)
    try:
        with Image.open(io.BytesIO(data), formats=list(PROVIDER_FORMATS)) as img:
            check_dimensions(*img.size, rules)
            img.load()  # an animated WebP: its first frame
            return to_rgb(img)
    except Image.DecompressionBombError:
        side = rules.max_side
        raise ImageRejected(f"The image has more pixels than the largest accepted, {side}x{side}.") from None
    except _DECODE_ERRORS:
        raise ImageRejected("The image is not a readable PNG, JPEG or WebP.") from None


def _limit_pillow(max_pixels: int) -> None:
    # Pillow's own decompression-bomb check, at open: it warns past MAX_IMAGE_PIXELS and refuses past
    # twice that. It is process-wide; a server has one max_side, so this is set once in practice.
    Image.MAX_IMAGE_PIXELS = max_pixels


@dataclass(eq=False)
class InputImage:
    """An uploaded image's bytes, and their checked RGB decode, made once and kept until released."""

    data: bytes
    _rgb: Image.Image | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rgb(self, decode: Callable[[bytes], Image.Image]) -> Image.Image:
        """The decode, made by `decode` the first time (one thread decodes; the others wait for it)."""
        with self._lock:
            if self._rgb is None:
                self._rgb = decode(self.data)
            return self._rgb

    def keep(self, rgb: Image.Image) -> None:
        """Holds a decode made elsewhere (the content check's), so the model that prepares this image next
        does not decode it again."""
        with self._lock:
            self._rgb = rgb

    def release(self) -> None:
        """Drops the decoded pixels (up to 64 MiB) once a model has prepared its inputs from them, so a
        request waiting in a queue holds its model inputs, not its decoded images."""
        with self._lock:
            self._rgb = None


class ImageDecoder:
    """Checks and decodes inputs, at most `rules.max_concurrent_decodes` at a time (each can be ~64 MB)."""

    def __init__(self, rules: ImageRules = ImageRules()) -> None:
        self.rules = rules
        self._slots = threading.BoundedSemaphore(rules.max_concurrent_decodes)

    def rgb(self, image: InputImage) -> Image.Image:
        """The image as RGB, or ImageRejected; blocking, so call it off the event loop."""
        return image.rgb(self._decode)

    def views(self, image: InputImage, *, keep: bool = False) -> tuple[Image.Image, ...]:
        """The image checked, as a content classifier must see it (`content_views`), or ImageRejected; the
        views are kept nowhere (the caller drops them once classified). `keep`: the image as a local model
        sees it is kept in `image` from this one decode, for the model about to prepare it. Blocking."""
        with self._slots:
            decoded = load_checked(image.data, self.rules)
        if keep:
            image.keep(to_rgb(decoded))
        return content_views(decoded)

    def check(self, image: InputImage) -> None:
        """Raises ImageRejected when vary would refuse the image; keeps nothing decoded. Blocking."""
        with self._slots:
            load_checked(image.data, self.rules)

    def _decode(self, data: bytes) -> Image.Image:
        with self._slots:
            return load_variation_input(data, self.rules)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PNG colour mode to 8-bit RGB; transparency is composited onto white."""
    img = _narrow_grey(img)
    if img.mode == "RGB":
        return img
    if not has_transparency(img):
        return img.convert("RGB")
    return _on(img.convert("RGBA"), (255, 255, 255))


def has_transparency(img: Image.Image) -> bool:
    """An alpha channel, or a tRNS chunk (a palette's transparent entries, or an RGB or grey colour key)."""
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


# The largest side of a transparent image's views for a content classifier (they classify at 224 to 256 px).
VIEW_SIDE = 1024


def content_views(img: Image.Image) -> tuple[Image.Image, ...]:
    """What a content classifier must look at: the image as whoever is sent its bytes may see it, as RGB.

    An opaque image is one view. A transparent one is three, since a provider is sent the PNG as it is and
    may drop the alpha (the pixels under a clear area show), composite it on white (as vary's own models
    do) or on black (content drawn in the alpha channel alone shows): a classifier that saw only one could
    be shown a harmless picture while the provider is sent another. They are made at most VIEW_SIDE px a
    side (box-reduced by a whole factor), so three views of a 4096 px input cost 9 MiB, not 144.
    """
    img = _narrow_grey(img)
    if not has_transparency(img):
        return (img if img.mode == "RGB" else img.convert("RGB"),)
    rgba = img.convert("RGBA")
    factor = -(-max(rgba.size) // VIEW_SIDE)
    if factor > 1:
        rgba = rgba.reduce(factor)
    return _on(rgba, (255, 255, 255)), _on(rgba, (0, 0, 0)), rgba.convert("RGB")


def _on(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")


def _narrow_grey(img: Image.Image) -> Image.Image:
    if img.mode in _WIDE_GREY_MODES:
        # Pillow's own conversion clips 16-bit values instead of scaling them.
        grey = np.asarray(img, dtype=np.uint32) >> 8
        return Image.fromarray(grey.astype(np.uint8))
    return img


def fit_to_size(img: Image.Image, size: int) -> Image.Image:
    """The exact size asked for; models render where they are good and we resample the rest."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.LANCZOS)


def encode_png(frame: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) uint8 array.

    fpng writes a 1024x1024 image in about 4 ms on one core, where Pillow's default takes over 100 ms
    (bench/png.py measures both); the files are standard PNGs any decoder reads. fpng holds the
    GIL while it works, so encoding in several threads does not run in parallel.
    """
    if _fpng is not None:
        png: bytes = _fpng.from_ndarray(np.ascontiguousarray(frame))
        return png
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
