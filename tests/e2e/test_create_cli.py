"""`vary create` against a live server: files of the right count and size, any input shape and format, clear errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import decode_png
from tests.e2e.terminal import Terminal
from vary.cli.create import square_png
from vary.testing import ServerProcess


def vary_create(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vary", "create", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def jpeg(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size, (30, 140, 200)).save(path, format="JPEG")
    return path


def test_variations_of_a_non_square_jpeg_are_written_and_listed(
    server: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    photo = jpeg(tmp_path / "holiday.jpg", (300, 200))
    out = tmp_path / "out"
    done = vary_create(
        str(photo), "-n", "3", "--size", "256x256", "--out", str(out), "--seed", "7",
        env={"VARY_SERVER": server.base_url, "VARY_API_KEY": api_key},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "holiday.jpg: cropped 300x200 to its centre 200x200, converted from JPEG to PNG" in done.stderr
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert paths == [out / f"holiday-variation-{k}.png" for k in (1, 2, 3)]
    assert all(decode_png(p.read_bytes()).size == (256, 256) for p in paths)
    # The seed makes the same request repeatable; this time through OPENAI_BASE_URL and --api-key.
    again = vary_create(
        str(photo), "-n", "3", "--size", "256x256", "--out", str(tmp_path / "again"), "--seed", "7",
        "--api-key", api_key, env={"OPENAI_BASE_URL": f"{server.base_url}/v1"},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "holiday-variation-1.png").read_bytes() == paths[0].read_bytes()


def test_a_wrong_key_or_no_server_is_a_clear_message_and_a_failure(server: ServerProcess, tmp_path: Path) -> None:
    photo = jpeg(tmp_path / "a.jpg", (64, 64))
    refused = vary_create(str(photo), "--server", server.base_url, "--api-key", "vary-nope-nope")
    assert refused.returncode == 1
    assert "vary: the server refused the request (401): Incorrect API key provided." in refused.stderr
    assert "Traceback" not in refused.stderr
    nowhere = vary_create(str(photo), "--server", "http://127.0.0.1:9", "--api-key", "k")
    assert nowhere.returncode == 1 and "cannot reach a server at http://127.0.0.1:9/v1" in nowhere.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    unreadable = vary_create(str(text), "--api-key", "k")
    assert unreadable.returncode == 2 and "not an image" in unreadable.stderr
    missing = vary_create(str(tmp_path / "missing.png"), "--api-key", "k")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_on_a_terminal_a_refusal_is_never_announced_as_done(server: ServerProcess, tmp_path: Path) -> None:
    photo = jpeg(tmp_path / "a.jpg", (64, 64))
    args = ("create", str(photo), "--server", server.base_url, "--api-key", "vary-nope-nope", "--out", str(tmp_path))
    with Terminal(*args) as terminal:
        assert terminal.finish() == 1
    screen = terminal.screen
    assert "vary: the server refused the request (401): Incorrect API key provided." in screen
    assert "done in" not in screen, screen  # it used to say "done in 0.0s" just before the refusal


def test_several_images_are_blended_by_their_weights(server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    a = jpeg(tmp_path / "a.jpg", (80, 64))
    b = tmp_path / "b.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(b)
    env = {"VARY_SERVER": server.base_url, "VARY_API_KEY": api_key}
    common = ("--size", "256x256", "--seed", "3")
    done = vary_create(str(a), str(b), "--weights", "0.7,0.3", "--out", str(tmp_path / "mix"), *common, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "mix" / "a+b-variation-1.png")]
    # Weights 0,1 are the second image alone: what `vary create b.png` makes with the same seed, but for the
    # float rounding of encoding two inputs in one call (a level or two; different images differ by tens).
    second = vary_create(str(a), str(b), "--weights", "0,1", "--out", str(tmp_path / "w"), *common, env=env)
    alone = vary_create(str(b), "--out", str(tmp_path / "alone"), *common, env=env)
    assert second.returncode == 0 and alone.returncode == 0, second.stderr + alone.stderr
    weighted, single = (
        np.asarray(decode_png(path.read_bytes()), dtype=np.int16)
        for path in (tmp_path / "w" / "a+b-variation-1.png", tmp_path / "alone" / "b-variation-1.png")
    )
    assert float(np.abs(weighted - single).mean()) < 2
    wrong = vary_create(str(a), str(b), "--weights", "1", *common, env=env)
    assert wrong.returncode == 2 and "--weights has 1 value for 2 images" in wrong.stderr
    refused = vary_create(str(a), str(b), "--weights", "0,0", *common, env=env)
    assert refused.returncode == 1 and "'image_weights' are all zero" in refused.stderr


def test_square_png_pads_scales_and_keeps_under_the_limit() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (2000, 1000), (255, 0, 0, 128)).save(buffer, format="WEBP")
    padded = square_png(buffer.getvalue(), fit="pad")
    assert padded.changes[:2] == ["padded 2000x1000 to 2000x2000", "scaled to 1024x1024"]
    image = decode_png(padded.data)
    assert image.size == (1024, 1024) and image.mode == "RGBA"
    assert image.getpixel((512, 10))[3] == 0 and image.getpixel((512, 512))[3] == 128  # transparent padding
    noise = Image.effect_noise((1024, 1024), 120).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="BMP")
    small = square_png(buffer.getvalue(), max_bytes=1_000_000)
    assert len(small.data) < 1_000_000 and decode_png(small.data).width < 1024
    already = io.BytesIO()
    Image.new("RGB", (64, 64)).save(already, format="PNG")
    assert square_png(already.getvalue()).changes == []
