"""The image checks hold for what Pillow will really decode: a PNG whose IHDR is not unique and first is
refused before a pixel is decoded, whatever its first header says; the server's peak memory shows it."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import create_key, png_bytes
from tests.robustness import hostile
from tests.robustness.hostile import MiB
from vary.testing import ServerProcess


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    """A server of its own, so its peak memory is this module's alone."""
    data_dir = tmp_path_factory.mktemp("decode") / "data"
    _, key = create_key(data_dir)
    with ServerProcess(data_dir) as server:
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            assert post(c, png_bytes(32)).status_code == 200  # warm
            yield server, c


def post(client: httpx.Client, image: bytes) -> httpx.Response:
    return client.post(
        "/v1/images/variations",
        files={"image": ("a.png", image, "image/png")},
        data={"size": "256x256", "response_format": "b64_json"},
    )


@functools.cache
def second_header_bomb() -> bytes:
    return hostile.two_headers((32, 32), (9000, 9000))  # 243 MB of RGB pixels behind a 32x32 header


CASES = [
    ("a 9000x9000 IHDR after a 32x32 one", second_header_bomb),
    ("a 32x31 IHDR after a 32x32 one: not square", lambda: hostile.two_headers((32, 32), (32, 31))),
    ("a 32x32 IHDR repeated", lambda: hostile.two_headers((32, 32), (32, 32))),
    ("a 13000x13000 RGBA IHDR after a 64x64 one", lambda: hostile.two_headers((64, 64), (13000, 13000), colour_type=6)),
]


@pytest.mark.parametrize(("case", "build"), CASES, ids=[case for case, _ in CASES])
def test_a_second_ihdr_is_refused_before_decoding(
    fresh: tuple[ServerProcess, httpx.Client], case: str, build: object
) -> None:
    server, client = fresh
    image = build()  # type: ignore[operator]
    assert server.process is not None
    pid = server.process.pid
    before = hostile.rss(pid)
    hostile.reset_peak(pid)
    response = post(client, image)
    grown = hostile.rss(pid, "VmHWM") - before
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "image" and "IHDR" in error["message"]
    assert grown < 100 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB for a {len(image) // 1024} KB upload"
    assert post(client, png_bytes(32)).status_code == 200
