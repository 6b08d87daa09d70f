"""The local image store under disk faults: a directory that cannot take files, a full disk, a read-only
one. `url` requests get 503 store_unavailable with Retry-After, `b64_json` keeps working, and the first
request after the disk recovers is served: nothing about a fault outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Running, serve

WAIT_S = 60
FLIPS = 3


def assert_store_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "store_unavailable"
    assert answer.json()["error"]["type"] == "server_error"
    assert int(answer.headers["Retry-After"]) >= 1
    assert "url" not in answer.json()


@contextlib.contextmanager
def server_storing_in(root: Path, images: Path) -> Iterator[Running]:
    # readyz answers from a probe at most every few seconds; these tests read it right after each flip
    env = {"VARY_STORAGE_URL": f"file://{images}", "VARY_READYZ_INTERVAL_SECONDS": "0"}
    with serve(root, env=env, request_timeout=WAIT_S) as vary:
        try:
            yield vary
        finally:
            vary.server.stop(signal.SIGKILL)  # if it still runs


class Hammer:
    """`url` requests sent one after another from a thread while the disk flips under them."""

    def __init__(self, vary: Running) -> None:
        self.vary = vary
        self.answers: list[httpx.Response] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.answers.append(self.vary.post_variation(response_format=None))

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)

    def check(self) -> None:
        assert self.answers, "no request was in flight"
        for answer in self.answers:
            if answer.status_code != 200:
                assert_store_unavailable(answer)  # never a 500, never a broken URL


def test_a_directory_that_cannot_take_files_fails_soft_and_recovers_at_once(tmp_path: Path) -> None:
    """Unprivileged and as root alike: the images path is a symlink swapped atomically between the real
    directory and a regular file, so every open under it fails with ENOTDIR, as on a broken volume."""
    real, not_a_dir, images = tmp_path / "images-real", tmp_path / "not-a-dir", tmp_path / "images"
    real.mkdir()
    not_a_dir.write_text("a file where the directory should be")

    def point_images_at(target: Path) -> None:
        swap = tmp_path / "images-swap"
        swap.unlink(missing_ok=True)
        swap.symlink_to(target)
        os.replace(swap, images)  # atomic: a request sees either the directory or the file

    point_images_at(real)
    with server_storing_in(tmp_path, images) as vary:
        stored = vary.post_variation(response_format=None).json()["data"][0]["url"]
        with Hammer(vary) as hammer:
            for _ in range(FLIPS):
                point_images_at(not_a_dir)
                assert_store_unavailable(vary.post_variation(response_format=None))
                assert vary.post_variation(response_format="b64_json").status_code == 200  # needs no store
                # A stored image cannot be read either: retry later, not "no such file".
                assert_store_unavailable(httpx.get(stored, timeout=WAIT_S))
                ready = httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S)
                assert ready.status_code == 503 and ready.json()["store"].startswith("failing")
                point_images_at(real)
                assert vary.post_variation(response_format=None).status_code == 200  # the first request after the fault
                assert httpx.get(stored, timeout=WAIT_S).status_code == 200
                assert httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S).status_code == 200
        hammer.check()
        assert not [p for p in real.iterdir() if p.name.startswith(".tmp-")]  # no partial write left behind


def test_a_removed_directory_is_made_again(tmp_path: Path) -> None:
    images = tmp_path / "images"
    with server_storing_in(tmp_path, images) as vary:
        assert vary.post_variation(response_format=None).status_code == 200
        for path in images.iterdir():
            path.unlink()
        images.rmdir()
        answer = vary.post_variation(response_format=None)
        assert answer.status_code == 200, answer.text
        assert httpx.get(answer.json()["data"][0]["url"], timeout=WAIT_S).status_code == 200


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full and read-only filesystem. Mounting needs privileges; without them the
    symlink test above covers the store's side and this one is skipped (unless VARY_REQUIRE_MOUNT is set)."""
    images = tmp_path / "images"
    images.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(images))
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("VARY_REQUIRE_MOUNT"):
            pytest.fail(f"VARY_REQUIRE_MOUNT is set but a tmpfs cannot be mounted ({exc})")
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    try:
        yield images
    finally:
        subprocess.run(["umount", "-l", str(images)], check=False, timeout=30)


def test_a_full_and_a_read_only_disk_fail_soft_and_recover(tmp_path: Path, small_disk: Path) -> None:
    images = small_disk
    filler = images / "filler"
    with server_storing_in(tmp_path, images) as vary:
        assert vary.post_variation(response_format=None).status_code == 200
        with Hammer(vary) as hammer:
            for _ in range(FLIPS):
                with open(filler, "wb") as f, contextlib.suppress(OSError):  # until ENOSPC
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                assert_store_unavailable(vary.post_variation(response_format=None))
                assert vary.post_variation(response_format="b64_json").status_code == 200
                filler.unlink()
                assert vary.post_variation(response_format=None).status_code == 200

                _mount("-o", "remount,ro", str(images))
                assert_store_unavailable(vary.post_variation(response_format=None))
                assert vary.post_variation(response_format="b64_json").status_code == 200
                _mount("-o", "remount,rw", str(images))
                assert vary.post_variation(response_format=None).status_code == 200
                for path in images.glob("*.png"):  # room for the next round
                    path.unlink()
        hammer.check()
