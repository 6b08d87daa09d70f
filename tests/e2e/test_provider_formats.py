"""Providers that answer in JPEG or WebP (gpt-image's output_format, gateways that transcode): accepted under
the limits a PNG meets (bytes, square, side, decompression bombs) and re-encoded, so the client always gets
PNGs of the asked size."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.fakes.providers import FakeProvider
from tests.harness import Running, catalogue, decode_png, hosted, serve

SECRET = "sk-fake-upstream-SECRET-formats"
WAIT_S = 60


def encoded(fmt: str, size: tuple[int, int] = (512, 512)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A small JPEG whose frame header (SOF0) claims side x side pixels."""
    data = bytearray(encoded("JPEG", (16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2  # height, width
    return bytes(data)


@pytest.fixture(scope="module")
def provider_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, FakeProvider]]:
    provider = FakeProvider(key=SECRET).start()
    options = {"key_env": "FAKE_OPENAI_KEY", "max_attempts": 1}
    models = catalogue(
        hosted("up-openai", "openai-compatible", f"{provider.base_url}/v1", **options),
        hosted("up-gpt-image", "openai-gpt-image", f"{provider.base_url}/v1", **options),
        default="up-openai",
    )
    try:
        env = {"FAKE_OPENAI_KEY": SECRET}
        with serve(tmp_path_factory.mktemp("formats"), catalogue=models, env=env, request_timeout=WAIT_S) as vary:
            yield vary, provider
    finally:
        provider.stop()


@pytest.mark.parametrize(
    ("route", "fault", "model"),
    [
        ("openai", ("b64", encoded("JPEG")), "up-openai"),
        ("openai", ("b64", encoded("WEBP")), "up-openai"),
        ("openai", ("url", encoded("WEBP")), "up-openai"),  # downloaded and re-hosted
        ("edits", ("b64", encoded("JPEG", (1024, 1024))), "up-gpt-image"),  # output_format=jpeg
    ],
    ids=["jpeg", "webp", "webp-url", "gpt-image-jpeg"],
)
def test_jpeg_and_webp_answers_become_pngs_of_the_asked_size(
    provider_server: tuple[Running, FakeProvider], route: str, fault: tuple[str, bytes], model: str
) -> None:
    vary, provider = provider_server
    provider.fail(route, fault)
    answer = vary.post_variation(model=model)
    assert answer.status_code == 200, answer.text
    image = decode_png(base64.b64decode(answer.json()["data"][0]["b64_json"]))
    assert image.format == "PNG" and image.size == (256, 256)
    assert image.convert("RGB").getpixel((128, 128)) == pytest.approx((200, 30, 90), abs=12)


@pytest.mark.parametrize(
    "bad",
    [jpeg_bomb(), encoded("JPEG", (512, 256)), encoded("WEBP", (300, 200)), encoded("GIF"), b"\xff\xd8\xff\xe0junk"],
    ids=["jpeg-bomb", "jpeg-not-square", "webp-not-square", "gif", "truncated-jpeg"],
)
def test_other_images_are_refused_within_the_same_limits(
    provider_server: tuple[Running, FakeProvider], bad: bytes
) -> None:
    vary, provider = provider_server
    provider.fail("openai", ("b64", bad))
    answer = vary.post_variation()
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["type"] == "server_error"
    assert vary.post_variation().status_code == 200  # and the server is fine
