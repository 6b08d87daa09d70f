"""`vary secret rotate`: running servers sign with the new secret within a sweep interval, and the URLs signed
before the rotation stay valid until they expire, across a restart too."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.harness import Running, png_bytes
from vary.state.signing import UrlSigner
from vary.testing import ServerProcess

WAIT_S = 60


def new_url(vary: Running) -> str:
    response = vary.post_variation(image=png_bytes(32), response_format="url", timeout=WAIT_S)
    assert response.status_code == 200, response.text
    url: str = response.json()["data"][0]["url"]
    return url


def signed_with(url: str, secret: bytes) -> bool:
    parsed = urlparse(url)
    query = {name: values[0] for name, values in parse_qs(parsed.query).items()}
    image_id = parsed.path.rsplit("/", 1)[1].removesuffix(".png")
    return UrlSigner(secret).signature(image_id, int(query["expires"])) == query["signature"]


def on(server: ServerProcess, url: str) -> str:
    """The same signed path and query, on `server` (a restarted server listens on another port)."""
    parsed = urlparse(url)
    return f"{server.base_url}{parsed.path}?{parsed.query}"


def rotate(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vary", "secret", "rotate", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_a_rotation_keeps_the_urls_signed_before_it(start_server: Callable[..., Running], restart: bool) -> None:
    vary = start_server(env={"VARY_SWEEP_INTERVAL_SECONDS": "0.5"})
    data_dir = vary.data_dir
    before = new_url(vary)
    old_secret = (data_dir / "secret").read_bytes()
    assert signed_with(before, old_secret)

    rotated = rotate(data_dir)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = (data_dir / "secret").read_bytes()
    assert new_secret != old_secret and (data_dir / "secret.previous").read_bytes() == old_secret
    assert (data_dir / "secret").stat().st_mode & 0o077 == 0

    if restart:
        vary.restart()
    deadline = time.monotonic() + WAIT_S
    after = new_url(vary)
    while not signed_with(after, new_secret):  # a running server reads the secrets again each interval
        assert time.monotonic() < deadline, "the server never signed with the new secret"
        time.sleep(0.2)  # poll interval, bounded by the deadline
        after = new_url(vary)

    assert httpx.get(on(vary.server, before), timeout=WAIT_S).status_code == 200  # signed before: valid until expiry
    assert httpx.get(after, timeout=WAIT_S).status_code == 200
    forged = after.replace(parse_qs(urlparse(after).query)["signature"][0], "0" * 64)
    assert httpx.get(forged, timeout=WAIT_S).status_code == 403


def test_a_second_rotation_retires_the_first_secret(start_server: Callable[..., Running]) -> None:
    vary = start_server()
    before = new_url(vary)
    vary.server.stop()
    assert rotate(vary.data_dir).returncode == 0 and rotate(vary.data_dir).returncode == 0
    vary.restart()
    assert httpx.get(on(vary.server, before), timeout=WAIT_S).status_code == 403
