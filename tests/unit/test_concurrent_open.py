"""A SQLite database opened by many processes and threads at once: every opener starts, the setup (the
switch to WAL, the migration) and the first key are each done once, and the others wait a bounded time.

The causes the stress test found (issue 39), each with its own test here:
- vary opened and closed the database file (and its -wal, -shm) to narrow their modes, in a process that
  already held SQLite's locks on them: closing any descriptor of a file drops all of the process's POSIX
  locks on it, so another process took the shared memory for unused and reset it under the first
  one (SQLITE_PROTOCOL, "locking protocol", after ten seconds of SQLite's own retries);
- every connection switched the file to WAL, and SQLite answers two switches at once with SQLITE_BUSY
  without waiting ("database is locked"): the switch is now the setup's, tried again while contended.

The stress test runs VARY_OPEN_STRESS_ROUNDS rounds (a short default for CI); docs/tests.md says how to
run it longer, under load.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from tests.openers import race, rounds
from tests.unit.test_migrations import OLD_SCHEMA, OLDEST_SCHEMA, model_columns, old_database
from vary.state import migrations
from vary.state.connection import DatabaseSetupError
from vary.state.database import Database
from vary.state.first_key import FIRST_KEY_LEASE, first_key
from vary.state.sqlite_setup import contended, retried

WAIT_S = 60
KINDS = ("missing", "empty", "oldest", "old", "current")  # the database the openers of a round find


def prepared(path: Path, kind: str) -> None:
    """The database as a round's openers find it: none at all (nor its directory), an empty file (as an
    earlier vary or `touch` left it), one an older vary made, or one already at the head without a key."""
    if kind == "missing":
        return
    path.parent.mkdir(parents=True)
    if kind == "empty":
        path.touch(mode=0o600)
    elif kind in ("oldest", "old"):
        old_database(path, OLDEST_SCHEMA if kind == "oldest" else OLD_SCHEMA)
    else:
        Database.open(path).close()


def check_set_up_once(path: Path, kind: str, keys_made: list[str]) -> None:
    """The file is vary's at the head, in WAL, its owner's only; an old one kept its rows; one key was made
    where none was active (the old databases have one)."""
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrations.head(),)]
        for table in ("api_keys", "usage", "leases", "secrets"):
            assert {row[1] for row in connection.execute(f"PRAGMA table_info({table})")} == model_columns(table)
        active = connection.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0]
        if kind in ("oldest", "old"):
            assert connection.execute("SELECT count(*) FROM usage").fetchone() == (2,)
            assert connection.execute("SELECT id FROM api_keys").fetchall() == [("0ld0ld00",)]
            assert keys_made == [] and active == 1
        else:
            assert len(keys_made) == 1 and active == 1, f"{len(keys_made)} first keys made, {active} active"
    finally:
        connection.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_many_processes_and_threads_open_one_database_at_once_round_after_round(tmp_path: Path) -> None:
    """Each round: 3 processes x 3 threads open a database together, as `vary serve` does at its start."""
    kinds = [KINDS[i % len(KINDS)] for i in range(rounds(len(KINDS) * 2))]
    paths = [tmp_path / f"round-{i}" / "data" / "vary.db" for i in range(len(kinds))]
    for path, kind in zip(paths, kinds, strict=True):
        prepared(path, kind)
    urls = [f"sqlite:///{path}" for path in paths]
    for done in race(urls, processes=3, threads=3, data_root=tmp_path / "keys"):
        kind = kinds[done.index]
        assert done.errors() == [], f"round {done.index} ({kind} database): {done.errors()[0]}"
        check_set_up_once(paths[done.index], kind, done.keys_made())


def posix_locks_held(paths: list[Path]) -> list[tuple[str, str, str]]:
    """The POSIX locks this process holds on `paths`: (file name, READ or WRITE, first byte), from /proc/locks."""
    inodes = {path.stat().st_ino: path.name for path in paths if path.exists()}
    held = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or fields[1] != "POSIX":
            continue  # a waiter's line, or another kind of lock
        kind, pid, device_inode, start = fields[3], int(fields[4]), fields[5], fields[6]
        inode = int(device_inode.rsplit(":", 1)[1])
        if pid == os.getpid() and inode in inodes:
            held.append((inodes[inode], kind, start))
    return sorted(held)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads Linux's /proc/locks")
def test_opening_a_database_this_process_has_open_keeps_sqlite_s_locks(tmp_path: Path) -> None:
    """The cause of "locking protocol": making a second Database closed a descriptor of the file (and of its
    shared memory) in a process whose first connection held SQLite's locks on them, which dropped them."""
    path = tmp_path / "vary.db"
    first = Database.open(path)
    try:
        with first.engine.connect() as connection:
            connection.exec_driver_sql("SELECT count(*) FROM api_keys").fetchall()  # connected: its locks held
            files = [path, path.with_name("vary.db-shm")]
            before = posix_locks_held(files)
            assert {name for name, _, _ in before} == {"vary.db", "vary.db-shm"}, before
            Database.open(path).close()  # another part of the process (a thread, a command) opens it too
            assert posix_locks_held(files) == before
    finally:
        first.close()


def another_process_writing(path: Path) -> sqlite3.Connection:
    """A connection holding the write lock of an old database in WAL, as another process's migration does."""
    old_database(path, OLDEST_SCHEMA)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("BEGIN IMMEDIATE")
    return writer


def test_an_opener_waits_for_another_s_setup_then_does_its_own(tmp_path: Path) -> None:
    path = tmp_path / "vary.db"
    writer = another_process_writing(path)
    outcome: list[object] = []

    def open_it() -> None:
        try:
            Database.open(path).close()
            outcome.append("opened")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    opener = threading.Thread(target=open_it)
    opener.start()
    opener.join(0.5)
    assert opener.is_alive() and outcome == [], "the opener did not wait for the other's lock"
    writer.execute("COMMIT")
    writer.close()
    opener.join(WAIT_S)
    assert outcome == ["opened"]
    check_set_up_once(path, "oldest", [])


def test_a_lock_held_past_the_wait_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "vary.db"
    writer = another_process_writing(path)
    db = Database(path)
    try:
        with pytest.raises(DatabaseSetupError) as raised:
            db.set_up(deadline=time.monotonic() + 0.5)
    finally:
        db.close()
        writer.close()
    message = str(raised.value)
    assert message.startswith(f"cannot use the database sqlite:///{path}: another process held it locked for ")
    assert "\n" not in message


def test_a_contended_step_is_tried_again_until_it_succeeds_or_the_deadline(tmp_path: Path) -> None:
    """SQLITE_BUSY (and SQLITE_PROTOCOL) mean "try again"; any other error does not; the retries end."""
    path = tmp_path / "x.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")  # another connection's write lock
    attempts: list[float] = []
    other_finishes_at = [3]  # the attempt at which the other writer has finished; none in the second part

    def write() -> str:
        attempts.append(time.monotonic())
        if len(attempts) in other_finishes_at:
            writer.execute("COMMIT")
        connection = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("COMMIT")
            return "written"
        finally:
            connection.close()

    assert retried(write, time.monotonic() + WAIT_S) == "written"
    assert len(attempts) == 3

    writer.execute("BEGIN IMMEDIATE")  # held to the end now
    attempts.clear()
    other_finishes_at.clear()
    with pytest.raises(sqlite3.OperationalError) as raised:
        retried(write, time.monotonic() + 0.3)
    assert contended(raised.value) and len(attempts) > 1
    writer.execute("COMMIT")

    def wrong() -> None:
        attempts.append(time.monotonic())
        connection = sqlite3.connect(path)
        try:
            connection.execute("SELECT * FROM no_such_table")
        finally:
            connection.close()

    attempts.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retried(wrong, time.monotonic() + WAIT_S)
    assert len(attempts) == 1
    assert contended(sqlite3.OperationalError("locking protocol"))  # SQLITE_PROTOCOL's message, without a code
    writer.close()


def test_a_replica_that_finds_the_first_key_lease_held_waits_for_that_key(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "vary.db")
    try:
        assert db.try_lease(FIRST_KEY_LEASE, "another replica", 60)
        made: list[str | None] = []
        waiter = threading.Thread(target=lambda: made.append(first_key(tmp_path / "this", db)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "it did not wait for the replica making the key"
        db.create_key("default")  # the other replica's key
        db.release_lease(FIRST_KEY_LEASE, "another replica")
        waiter.join(WAIT_S)
        assert made == [None] and db.count_active_keys() == 1
        assert not (tmp_path / "this").exists()
    finally:
        db.close()


def test_a_first_key_lease_whose_holder_crashed_is_taken_over_when_it_expires(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "vary.db")
    try:
        assert db.try_lease(FIRST_KEY_LEASE, "a replica that crashed", 0.5)  # never released
        key = first_key(tmp_path / "this", db)
        assert key is not None and db.authenticate(key) is not None and db.count_active_keys() == 1
        assert (tmp_path / "this" / "first-api-key").read_text() == key + "\n"
    finally:
        db.close()


def test_waiting_for_the_first_key_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database.open(tmp_path / "vary.db")
    try:
        assert db.try_lease(FIRST_KEY_LEASE, "a replica stuck making it", 60)
        started = time.monotonic()
        assert first_key(tmp_path / "this", db, wait_seconds=0.3) is None
        assert time.monotonic() - started < WAIT_S
        assert db.count_active_keys() == 0
        assert "without making a key: starting without one (vary keys create makes one)" in caplog.text
    finally:
        db.close()
