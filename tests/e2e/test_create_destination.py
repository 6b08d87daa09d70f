"""`vary create` keeps what it makes: the destination checked before asking, no silent overwrite, a bare
host:port for --server, and words that fit a PNG input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from PIL import Image

from tests.e2e.terminal import console_script
from tests.e2e.test_create_cli import jpeg
from vary.testing import ServerProcess


def vary_create(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*console_script(), "create", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_a_destination_that_cannot_be_written_is_said_before_any_request(tmp_path: Path) -> None:
    photo = jpeg(tmp_path / "a.jpg", (64, 64))
    a_file = tmp_path / "taken.png"
    a_file.write_bytes(b"mine")
    # No server listens at port 9: a check made after the request would answer "cannot reach" instead.
    for out, said in (
        (a_file, f"vary: --out {a_file} is a file, not a folder"),
        (a_file / "sub", f"vary: --out {a_file / 'sub'}: cannot make this folder"),
    ):
        done = vary_create(str(photo), "--out", str(out), "--server", "127.0.0.1:9", "--api-key", "k")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(said), done.stderr
        assert "Traceback" not in done.stderr and "cannot reach" not in done.stderr
    assert a_file.read_bytes() == b"mine"


def test_a_second_run_into_the_same_folder_keeps_the_first_runs_files(
    server: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.png"
    Image.new("RGB", (96, 64), (200, 120, 10)).save(photo)
    out = tmp_path / "out"
    host_port = server.base_url.removeprefix("http://")  # as curl takes it, without the scheme
    common = ("--size", "256x256", "--out", str(out), "--server", host_port, "--api-key", api_key)
    first = vary_create(str(photo), "-n", "2", "--seed", "1", *common)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [str(out / "cat-variation-1.png"), str(out / "cat-variation-2.png")]
    kept = {path: path.read_bytes() for path in out.iterdir()}
    second = vary_create(str(photo), "--seed", "2", *common)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == [str(out / "cat-variation-3.png")]
    assert all(path.read_bytes() == data for path, data in kept.items())
    # A PNG input is not "converted from PNG to PNG".
    assert "cat.png: cropped 96x64 to its centre 64x64, now " in first.stderr, first.stderr
    assert "from PNG" not in first.stderr
