"""Usage accounting loses nothing: with another process holding SQLite's write lock, or with the disk full,
requests are served without waiting on the database, their rows are spooled and written once the database
takes writes again (after a restart too), the quota counts them meanwhile, and /readyz says the database
cannot be written. Real locks from a second process; a real full disk (a small tmpfs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import create_key, png_bytes, serve, usage_rows, usage_rows_until

WAIT_S = 60
IMAGE = png_bytes(32)
HOLD_LOCK = (
    "import sqlite3, sys\n"
    "connection = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "connection.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.readline()\n"
    "connection.execute('ROLLBACK')\n"
)


class WriteLock:
    """Another process holding SQLite's write lock on the database until released."""

    def __init__(self, db_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT_S)


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A data dir with a key without limits and a key with a quota of 3 images."""
    data_dir = tmp_path / "data"
    key = create_key(data_dir, "free")[1]
    quota_key = create_key(data_dir, "quota", image_quota=3)[1]
    yield data_dir, key, quota_key


def rows_in(data_dir: Path) -> int:
    return len(usage_rows(data_dir))


def wait_for_rows(data_dir: Path, count: int) -> int:
    """How many rows there are once there are `count` (a spooled row is written a moment later), or at the bound."""
    return len(usage_rows_until(data_dir, lambda rows: len(rows) >= count, timeout=WAIT_S))


def test_rows_are_kept_while_another_process_holds_the_write_lock(setup: tuple[Path, str, str]) -> None:
    data_dir, key, _ = setup
    # Readiness probed each call.
    readyz = {"VARY_READYZ_INTERVAL_SECONDS": "0"}
    with serve(data_dir.parent, env=readyz, key=False, request_timeout=WAIT_S) as vary:
        assert vary.post_variation(key, image=IMAGE).status_code == 200
        assert wait_for_rows(data_dir, 1) == 1  # written, or spooled for a moment: the lock comes after it
        lock = WriteLock(data_dir / "vary.db")
        try:
            statuses: list[int] = []
            threads = [
                threading.Thread(target=lambda: statuses.append(vary.post_variation(key, image=IMAGE).status_code))
                for _ in range(24)
            ]
            for thread in threads:
                thread.start()
            # Answered while the lock is held (it is released only below): a server waiting on the lock would
            # never answer. A generous bound: a busy machine answers slowly, never not at all.
            listed = httpx.get(f"{vary.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=WAIT_S)
            for thread in threads:
                thread.join(WAIT_S)
            assert statuses == [200] * 24
            assert listed.status_code == 200
            ready = httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S)
            assert ready.status_code == 503, ready.text
            assert ready.json()["database"].startswith("failing") and ready.json()["usage_spooled"] == 24
            assert rows_in(data_dir) == 1  # nothing got past the lock
        finally:
            lock.release()
        assert wait_for_rows(data_dir, 25) == 25
        ready = httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S)
        assert ready.status_code == 200 and ready.json()["usage_spooled"] == 0
    assert rows_in(data_dir) == 25  # and not one more: nothing written twice


def test_the_quota_counts_spooled_images(setup: tuple[Path, str, str]) -> None:
    data_dir, _, quota_key = setup
    with serve(data_dir.parent, key=False, request_timeout=WAIT_S) as vary:
        lock = WriteLock(data_dir / "vary.db")
        try:
            assert [vary.post_variation(quota_key, image=IMAGE).status_code for _ in range(3)] == [200, 200, 200]
            refused = vary.post_variation(quota_key, image=IMAGE)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "insufficient_quota"
        finally:
            lock.release()
        assert wait_for_rows(data_dir, 4) == 4
        # The same, once the rows are in the database.
        assert vary.post_variation(quota_key, image=IMAGE).status_code == 429


def test_spooled_rows_survive_a_restart(setup: tuple[Path, str, str]) -> None:
    data_dir, key, _ = setup
    spool = data_dir / "usage-spool.jsonl"
    lock = WriteLock(data_dir / "vary.db")
    try:
        with serve(data_dir.parent, key=False, request_timeout=WAIT_S) as vary:
            assert [vary.post_variation(key, image=IMAGE, n="2").status_code for _ in range(3)] == [200, 200, 200]
        assert len(spool.read_text().splitlines()) == 3  # stopped with the lock still held
    finally:
        lock.release()
    with serve(data_dir.parent, key=False):
        assert wait_for_rows(data_dir, 3) == 3
    assert sum(row.n or 0 for row in usage_rows(data_dir)) == 6
    assert not spool.exists()


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, so the disk can really be filled; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            pass
    return filler


def test_rows_are_kept_while_the_disk_is_full(small_disk: Path) -> None:
    with serve(small_disk, request_timeout=WAIT_S) as vary:
        data_dir, key = vary.data_dir, vary.key
        assert vary.post_variation(key, image=IMAGE).status_code == 200
        filler = fill(small_disk)
        try:
            served = [vary.post_variation(key, image=IMAGE, n="3") for _ in range(3)]
            assert [answer.status_code for answer in served] == [200, 200, 200]
            assert len(served[0].json()["data"]) == 3
            assert httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S).json()["usage_spooled"] == 3
        finally:
            filler.unlink()
        assert wait_for_rows(data_dir, 4) == 4
        assert httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S).json()["usage_spooled"] == 0
