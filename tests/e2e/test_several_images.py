"""Several input images in one request, blended by `image_weights`: the SDK's `image[]`, repeated parts, errors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from openai import BadRequestError, OpenAI

from tests.conftest import decode_png, png_bytes
from tests.harness import b64_images
from tests.robustness.hostile import padded_to
from vary.testing import ServerProcess

MiB = 1024 * 1024
URL = "/v1/images/variations"


@pytest.fixture()
def client(server: ServerProcess, api_key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)


def red() -> bytes:
    return png_bytes(64, color=(220, 20, 20))


def blue() -> bytes:
    return png_bytes(64, color=(20, 20, 220))


def error(message: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def images(http: httpx.Client, parts: list[tuple[str, bytes]], **fields: str) -> list[bytes]:
    files = [(name, (f"{k}.png", data, "image/png")) for k, (name, data) in enumerate(parts)]
    return b64_images(http.post(URL, data={"response_format": "b64_json", "size": "256x256", **fields}, files=files))


def test_the_sdk_sends_a_list_as_image_parts_and_gets_a_blend(client: OpenAI) -> None:
    result = client.images.create_variation(
        image=[red(), blue()],  # type: ignore[arg-type]  # the SDK sends a list as image[] parts
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"image_weights": "0.7,0.3", "seed": 5},
    )
    assert len(result.data) == 2 and all(item.b64_json for item in result.data)


def difference(a: list[bytes], b: list[bytes]) -> float:
    """Mean absolute pixel difference: encoding two inputs in one call rounds floats differently than one,
    so equal is "under 2 levels"; different images differ by tens."""
    pixels = [np.asarray(decode_png(data), dtype=np.int16) for data in (a[0], b[0])]
    return float(np.abs(pixels[0] - pixels[1]).mean())


def test_weights_pick_an_image_and_mix_them(http: httpx.Client) -> None:
    red_alone = images(http, [("image", red())], seed="11")
    blue_alone = images(http, [("image", blue())], seed="11")
    assert difference(red_alone, blue_alone) > 2
    # Repeated `image` parts and `image[]` parts are the same request.
    assert (
        difference(images(http, [("image", red()), ("image", blue())], seed="11", image_weights="1,0"), red_alone) < 2
    )
    assert (
        difference(images(http, [("image[]", red()), ("image[]", blue())], seed="11", image_weights="0,1"), blue_alone)
        < 2
    )
    mixed = images(http, [("image[]", red()), ("image[]", blue())], seed="11")
    assert min(difference(mixed, red_alone), difference(mixed, blue_alone)) > 0.5
    assert images(http, [("image[]", red()), ("image[]", blue())], seed="11", image_weights="2,2") == mixed
    # One image, with or without its weight, is the request it always was, to the byte.
    assert images(http, [("image", red())], seed="11", image_weights="1") == red_alone


def test_five_images_up_to_the_body_cap(http: httpx.Client) -> None:
    # Five images of nearly 4 MB each fit under the body cap (one image's worth would not).
    big = padded_to(png_bytes(64), 4 * MiB - 64 * 1024)
    files = [("image[]", (f"{k}.png", big, "image/png")) for k in range(5)]
    response = http.post(URL, data={"response_format": "b64_json", "size": "256x256"}, files=files)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("parts", "fields", "expected"),
    [
        (
            [("image[]", red())] * 6,
            {},
            error("Too many images: 6 were given; the most is 5.", "image"),
        ),
        (
            [("image", red()), ("image[]", b"not a png")],
            {},
            error("Uploaded image must be a PNG and less than 4 MB.", "image"),
        ),
        (
            [("image", red()), ("image", png_bytes((64, 32)))],
            {},
            error("Uploaded image must be square, but it is 64x32.", "image"),
        ),
        (
            [("image", red()), ("image", blue())],
            {"image_weights": "1"},
            error("'image_weights' has 1 value for 2 images; give one weight per image.", "image_weights"),
        ),
        (
            [("image", red())],
            {"image_weights": "1,1"},
            error("'image_weights' has 2 values for 1 image; give one weight per image.", "image_weights"),
        ),
        (
            [("image", red()), ("image", blue())],
            {"image_weights": "1,-1"},
            error("'-1' is not a non-negative number - 'image_weights'", "image_weights"),
        ),
        (
            [("image", red()), ("image", blue())],
            {"image_weights": "1,nan"},
            error("'nan' is not a non-negative number - 'image_weights'", "image_weights"),
        ),
        (
            [("image", red()), ("image", blue())],
            {"image_weights": "0,0"},
            error("'image_weights' are all zero; at least one image needs weight.", "image_weights"),
        ),
    ],
)
def test_refusals_name_the_field(
    http: httpx.Client, parts: list[tuple[str, bytes]], fields: dict[str, str], expected: dict[str, object]
) -> None:
    files = [(name, (f"{k}.png", data, "image/png")) for k, (name, data) in enumerate(parts)]
    response = http.post(URL, data=fields, files=files)
    assert response.status_code == 400
    assert response.json() == expected


def test_an_image_part_that_is_not_a_file(http: httpx.Client) -> None:
    response = http.post(URL, files=[("image", ("a.png", red(), "image/png")), ("image[]", (None, "text"))])
    assert response.status_code == 400
    assert response.json() == error("'image' must be a file upload (multipart/form-data with a filename).", "image")


def test_other_fields_may_still_not_repeat(client: OpenAI, http: httpx.Client) -> None:
    response = http.post(
        URL,
        files=[
            ("image", ("a.png", red(), "image/png")),
            ("image_weights", (None, "1")),
            ("image_weights", (None, "1")),
        ],
    )
    assert response.json() == error("Duplicate parameter: 'image_weights' was given more than once.", "image_weights")
    with pytest.raises(BadRequestError):
        client.images.create_variation(image=red(), extra_body={"image_weights": "a"})
