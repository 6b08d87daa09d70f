"""Input PNG checks and conversion, output resizing and PNG encoding.

Cheap checks run on the raw bytes and the PNG header before anything is decoded, so that a
decompression bomb or a non-PNG costs microseconds, not memory. The limits are then checked again on
Pillow's own view of the image, the one it will decode: a PNG with a second IHDR (which Pillow obeys
and the first-chunk read would not see) is refused outright, and any other disagreement is caught there.
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
# A chunk is its length, type, data and CRC.
_CHUNK_OVERHEAD = 12
# 16-bit greyscale PNGs decode to one of these 32-bit integer modes holding 0..65535.
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format requires to come first."""
    if len(data) < _IHDR_END or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        raise invalid(NOT_A_PNG, param="image")
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
            raise invalid(
                "Uploaded image is not a valid PNG: its IHDR header chunk must come first and only once.",
                param="image",
            )
        if kind == b"IEND":
            return
        offset += _CHUNK_OVERHEAD + length


def check_dimensions(width: int, height: int, *, max_side: int) -> None:
    """OpenAI's rules on a size: some pixels, square, at most max_side a side."""
    if width == 0 or height == 0:
        raise invalid("Uploaded image has no pixels.", param="image")
    if width != height:
        raise invalid(f"Uploaded image must be square, but it is {width}x{height}.", param="image")
    if width > max_side:
        raise invalid(
            f"Uploaded image is {width}x{height} pixels; the largest accepted is {max_side}x{max_side}.",
            param="image",
        )


def load_variation_input(data: bytes, *, max_bytes: int, max_side: int) -> Image.Image:
    """Checks an uploaded image against OpenAI's rules and returns it as RGB.

    Memory for one image is bounded by max_side² pixels (Pillow's own bomb limit is set to that too).
    """
    if len(data) >= max_bytes:
        raise invalid(NOT_A_PNG, param="image")
    width, height = png_dimensions(data)
    check_dimensions(width, height, max_side=max_side)
    check_single_header(data)
    _limit_pillow(max_side * max_side)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.size != (width, height):  # what Pillow will decode is not what the header said
                raise invalid(
                    "Uploaded image is not a valid PNG: its header and its decoded size disagree.", param="image"
                )
            check_dimensions(*img.size, max_side=max_side)
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError:
        raise invalid(
            f"Uploaded image has more pixels than the largest accepted, {max_side}x{max_side}.", param="image"
        ) from None
    except _DECODE_ERRORS:
        raise invalid("Uploaded image is not a valid PNG: it is truncated or corrupt.", param="image") from None


def _limit_pillow(max_pixels: int) -> None:
    # Pillow's own decompression-bomb check, at open: it warns past MAX_IMAGE_PIXELS and refuses past
    # twice that. It is process-wide; a server has one max_side, so this is set once in practice.
    Image.MAX_IMAGE_PIXELS = max_pixels


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
