"""Input PNG checks and conversion, output resizing and PNG encoding.

Cheap checks run on the raw bytes and the PNG header before anything is decoded, so that a
decompression bomb or a non-PNG costs microseconds, not memory.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    import fpng as _fpng
except ImportError:  # pragma: no cover - platforms without an fpng build fall back to Pillow
    _fpng = None

from vary.api.errors import invalid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_A_PNG = "Uploaded image must be a PNG and less than 4 MB."
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
# 16-bit greyscale PNGs decode to one of these 32-bit integer modes holding 0..65535.
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format requires to come first."""
    if len(data) < _IHDR_END or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        raise invalid(NOT_A_PNG, param="image")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def load_variation_input(data: bytes, *, max_bytes: int, max_side: int) -> Image.Image:
    """Checks an uploaded image against OpenAI's rules and returns it as RGB."""
    if len(data) >= max_bytes:
        raise invalid(NOT_A_PNG, param="image")
    width, height = png_dimensions(data)
    if width == 0 or height == 0:
        raise invalid("Uploaded image has no pixels.", param="image")
    if width != height:
        raise invalid(f"Uploaded image must be square, but it is {width}x{height}.", param="image")
    if width > max_side:
        raise invalid(
            f"Uploaded image is {width}x{height} pixels; the largest accepted is {max_side}x{max_side}.",
            param="image",
        )
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            img.load()
            return to_rgb(img)
    except _DECODE_ERRORS:
        raise invalid("Uploaded image is not a valid PNG: it is truncated or corrupt.", param="image") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PNG colour mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode in _WIDE_GREY_MODES:
        # Pillow's own conversion clips 16-bit values instead of scaling them.
        grey = np.asarray(img, dtype=np.uint32) >> 8
        img = Image.fromarray(grey.astype(np.uint8))
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


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
