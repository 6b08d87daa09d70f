"""Usage accounting loses nothing: with another process holding SQLite's write lock, or with the disk full,
requests are served without waiting on the database, their rows are spooled and written once the database
takes writes again (after a restart too), the quota counts them meanwhile, and /readyz says the database
cannot be written. Real locks from a second process; a real full disk (a small tmpfs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import png_bytes
from vary.key_limits import KeyLimits
from vary.state.database import Database
from vary.testing import ServerProcess

WAIT_S = 60
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
    db = Database.open(data_dir / "vary.db")
    try:
        key = db.create_key("free")[1]
        quota_key = db.create_key("quota", limits=KeyLimits(image_quota=3))[1]
    finally:
        db.close()
    yield data_dir, key, quota_key


def post(server: ServerProcess, key: str, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/images/variations",
        headers={"Authorization": f"Bearer {key}"},
        files={"image": ("a.png", png_bytes(32))},
        data={"size": "256x256", "response_format": "b64_json", **fields},
        timeout=WAIT_S,
    )


def rows_in(data_dir: Path) -> int:
    db = Database.open(data_dir / "vary.db")
    try:
        return len(db.usage_rows())
    finally:
        db.close()


def wait_for_rows(data_dir: Path, count: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while (found := rows_in(data_dir)) < count and time.monotonic() < deadline:
        time.sleep(0.2)  # poll interval, bounded by the deadline
    return found


def test_rows_are_kept_while_another_process_holds_the_write_lock(setup: tuple[Path, str, str]) -> None:
    data_dir, key, _ = setup
    with ServerProcess(data_dir, env={"VARY_READYZ_INTERVAL_SECONDS": "0"}) as server:  # readiness probed each call
        assert post(server, key).status_code == 200
        assert wait_for_rows(data_dir, 1) == 1  # written, or spooled for a moment: the lock comes after it
        lock = WriteLock(data_dir / "vary.db")
        try:
            statuses: list[int] = []
            threads = [
                threading.Thread(target=lambda: statuses.append(post(server, key).status_code)) for _ in range(24)
            ]
            for thread in threads:
                thread.start()
            # Answered while the lock is held (it is released only below): a server waiting on the lock would
            # never answer. A generous bound: a busy machine answers slowly, never not at all.
            listed = httpx.get(
                f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=WAIT_S
            )
            for thread in threads:
                thread.join(WAIT_S)
            assert statuses == [200] * 24
            assert listed.status_code == 200
            ready = httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S)
            assert ready.status_code == 503, ready.text
            assert ready.json()["database"].startswith("failing") and ready.json()["usage_spooled"] == 24
            assert rows_in(data_dir) == 1  # nothing got past the lock
        finally:
            lock.release()
        assert wait_for_rows(data_dir, 25) == 25
        ready = httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S)
        assert ready.status_code == 200 and ready.json()["usage_spooled"] == 0
    assert rows_in(data_dir) == 25  # and not one more: nothing written twice


def test_the_quota_counts_spooled_images(setup: tuple[Path, str, str]) -> None:
    data_dir, _, quota_key = setup
    with ServerProcess(data_dir) as server:
        lock = WriteLock(data_dir / "vary.db")
        try:
            assert [post(server, quota_key).status_code for _ in range(3)] == [200, 200, 200]
            refused = post(server, quota_key)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "insufficient_quota"
        finally:
            lock.release()
        assert wait_for_rows(data_dir, 4) == 4
        assert post(server, quota_key).status_code == 429  # the same, once the rows are in the database


def test_spooled_rows_survive_a_restart(setup: tuple[Path, str, str]) -> None:
    data_dir, key, _ = setup
    spool = data_dir / "usage-spool.jsonl"
    lock = WriteLock(data_dir / "vary.db")
    try:
        with ServerProcess(data_dir) as server:
            assert [post(server, key, n="2").status_code for _ in range(3)] == [200, 200, 200]
        assert len(spool.read_text().splitlines()) == 3  # stopped with the lock still held
    finally:
        lock.release()
    with ServerProcess(data_dir):
        assert wait_for_rows(data_dir, 3) == 3
    db = Database.open(data_dir / "vary.db")
    try:
        assert sum(row.n or 0 for row in db.usage_rows()) == 6
    finally:
        db.close()
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
    data_dir = small_disk / "data"
    db = Database.open(data_dir / "vary.db")
    try:
        key = db.create_key("free")[1]
    finally:
        db.close()
    server = ServerProcess(data_dir).start()
    try:
        assert post(server, key).status_code == 200
        filler = fill(small_disk)
        try:
            served = [post(server, key, n="3") for _ in range(3)]
            assert [answer.status_code for answer in served] == [200, 200, 200]
            assert len(served[0].json()["data"]) == 3
            assert httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S).json()["usage_spooled"] == 3
        finally:
            filler.unlink()
        assert wait_for_rows(data_dir, 4) == 4
        assert httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S).json()["usage_spooled"] == 0
    finally:
        server.stop(signal.SIGTERM)
