"""Many concurrent requests through the live server: coalesced into batches, each answered with its own images."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness import Running, decode_png, png_bytes, serve

# (n, size, response_format) per concurrent request; sizes mixed so batches must split by size.
REQUESTS = [(1 + i % 3, ("256x256", "512x512", "1024x1024")[i % 3], ("url", "b64_json")[i % 2]) for i in range(12)]


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # Enough denoising steps that requests arriving together find the worker busy and queue up.
    with serve(tmp_path_factory.mktemp("concurrency"), env={"VARY_NUM_INFERENCE_STEPS": "8"}) as vary:
        yield vary


def test_concurrent_requests_share_batches_and_each_gets_its_own_images(slow_server: Running, tmp_path: Path) -> None:
    client = slow_server.client(timeout=120)

    def call(spec: tuple[int, str, str]) -> tuple[tuple[int, str, str], httpx.Headers, list[bytes]]:
        n, size, fmt = spec
        raw = client.images.with_raw_response.create_variation(
            image=png_bytes(32 + n), n=n, size=size, response_format=fmt
        )
        data = raw.parse().data
        images = [
            base64.b64decode(d.b64_json or "") if fmt == "b64_json" else httpx.get(d.url or "", timeout=30).content
            for d in data
        ]
        return spec, raw.headers, images

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        results = list(pool.map(call, REQUESTS))

    shared = 0
    for (n, size, _), headers, images in results:
        side = int(size.split("x")[0])
        assert len(images) == n
        assert all(decode_png(img).size == (side, side) for img in images)
        stages = dict(part.split(";dur=") for part in headers["server-timing"].split(", "))
        assert set(stages) == {"prepare", "queue", "generate", "encode", "total"}
        assert all(float(v) >= 0 for v in stages.values())
        batch_images = int(headers["x-vary-batch-images"])
        assert n <= batch_images <= 16
        shared += batch_images > n
    assert shared > 0, "concurrent same-size requests should have been coalesced"
    every_image = [img for _, _, images in results for img in images]
    assert len(set(every_image)) == len(every_image), "no image may be handed to two requests"
