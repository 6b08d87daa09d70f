from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import png_bytes
from vary.api.errors import api_error
from vary.errors import ImageRejected
from vary.imaging import (
    VIEW_SIDE,
    ImageRules,
    content_views,
    encode_png,
    fit_to_size,
    load_variation_input,
    png_dimensions,
    to_rgb,
)

LIMITS = ImageRules(max_bytes=4 * 1024 * 1024, max_side=4096)


def test_dimensions_come_from_the_header() -> None:
    assert png_dimensions(png_bytes((30, 20))) == (30, 20)
    with pytest.raises(ImageRejected):
        png_dimensions(b"GIF89a" + b"\0" * 40)


def test_transparency_is_composited_onto_white() -> None:
    clear = to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert clear.mode == "RGB" and clear.getpixel((0, 0)) == (255, 255, 255)
    half = to_rgb(Image.new("LA", (4, 4), (0, 128)))
    assert half.getpixel((0, 0)) == pytest.approx((127, 127, 127), abs=1)
    palette = Image.new("P", (4, 4), 3)
    palette.info["transparency"] = 3
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_a_transparent_image_is_classified_in_every_view_a_provider_may_take() -> None:
    """On white (vary's models), on black (content drawn in the alpha alone), and with the alpha dropped (the
    pixels under a clear area)."""
    hidden_under_clear = Image.new("RGBA", (4, 4), (200, 140, 110, 0))
    on_white, on_black, dropped = content_views(hidden_under_clear)
    assert (on_white.getpixel((0, 0)), on_black.getpixel((0, 0)), dropped.getpixel((0, 0))) == (
        (255, 255, 255),
        (0, 0, 0),
        (200, 140, 110),
    )
    drawn_in_alpha = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    drawn_in_alpha.putpixel((1, 1), (255, 255, 255, 255))
    on_white, on_black, dropped = content_views(drawn_in_alpha)
    assert len(on_white.getcolors() or ()) == 1 and len(dropped.getcolors() or ()) == 1  # blank in both
    assert on_black.getpixel((1, 1)) == (255, 255, 255) and on_black.getpixel((0, 0)) == (0, 0, 0)
    assert all(view.mode == "RGB" for view in content_views(Image.new("LA", (4, 4), (90, 0))))
    palette = Image.new("P", (4, 4), 3)
    palette.info["transparency"] = 3
    assert len(content_views(palette)) == 3


def test_an_opaque_image_is_one_view_and_a_large_transparent_one_is_reduced() -> None:
    (opaque,) = content_views(Image.new("RGB", (8, 8), (1, 2, 3)))
    assert opaque.getpixel((0, 0)) == (1, 2, 3)
    views = content_views(Image.new("RGBA", (4096, 4096), (9, 9, 9, 0)))
    assert [view.size for view in views] == [(VIEW_SIDE, VIEW_SIDE)] * 3


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    img = load_variation_input(png_bytes(8, "I;16", color=32768), LIMITS)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (128, 128, 128)


def test_load_checks_size_limit_before_decoding() -> None:
    data = png_bytes(8)
    with pytest.raises(ImageRejected) as err:
        load_variation_input(data, ImageRules(max_bytes=len(data), max_side=4096))
    assert err.value.param == "image" and api_error(err.value).status == 400
    assert load_variation_input(data, ImageRules(max_bytes=len(data) + 1, max_side=4096)).size == (8, 8)


def test_side_limit() -> None:
    with pytest.raises(ImageRejected, match="largest accepted is 16x16"):
        load_variation_input(png_bytes(17), ImageRules(max_bytes=10**7, max_side=16))


def test_fit_to_size_and_encode_roundtrip() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    assert fit_to_size(img, 64) is img
    big = np.asarray(fit_to_size(img, 256))
    assert big.shape == (256, 256, 3)
    decoded = Image.open(io.BytesIO(encode_png(big)))
    assert decoded.format == "PNG" and decoded.size == (256, 256)
    assert np.array_equal(np.asarray(decoded.convert("RGB")), big), "PNG encoding must be lossless"
