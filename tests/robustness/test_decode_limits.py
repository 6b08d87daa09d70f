"""The image checks hold for what Pillow will really decode: a PNG whose IHDR is not unique and first is
refused before a pixel is decoded, whatever its first header says; the server's peak memory shows it."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from tests.harness import Running, png_bytes, serve
from tests.robustness import hostile
from tests.robustness.hostile import MiB


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server of its own, so its peak memory is this module's alone."""
    with serve(tmp_path_factory.mktemp("decode")) as vary:
        assert vary.post_variation(image=png_bytes(32)).status_code == 200  # warm
        yield vary


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
def test_a_second_ihdr_is_refused_before_decoding(fresh: Running, case: str, build: object) -> None:
    server = fresh.server
    image = build()  # type: ignore[operator]
    assert server.process is not None
    pid = server.process.pid
    before = hostile.rss(pid)
    hostile.reset_peak(pid)
    response = fresh.post_variation(image=image)
    grown = hostile.rss(pid, "VmHWM") - before
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "image" and "IHDR" in error["message"]
    assert grown < 100 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB for a {len(image) // 1024} KB upload"
    assert fresh.post_variation(image=png_bytes(32)).status_code == 200
