"""The shared database's edges, on a real PostgreSQL of each test's own: a server frozen by SIGSTOP (its
processes stopped, its kernel still answering TCP), and a server that dies while `vary keys` or `vary usage`
waits on it."""

from __future__ import annotations

import contextlib
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

from tests.cluster.postgres import PostgresServer, started_postgres, stop
from tests.harness import post_variation
from vary.state.database import Database
from vary.testing import ServerProcess

pytestmark = pytest.mark.cluster
WAIT_S = 60


@pytest.fixture()
def own_postgres() -> Iterator[PostgresServer]:
    with started_postgres() as server:
        yield server


def postgres_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every backend it forked (a SIGSTOP to the postmaster alone leaves them running)."""
    pids = [server.process.pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid:
                pids.append(int(entry.name))
    return pids


class Frozen:
    """Every process of the server stopped (SIGSTOP) until `thaw`; always thawed on leaving."""

    def __init__(self, server: PostgresServer) -> None:
        self.pids = postgres_pids(server)

    def __enter__(self) -> Frozen:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def thaw(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __exit__(self, *exc: object) -> None:
        self.thaw()


def test_a_frozen_database_is_a_503_never_a_hang_and_the_server_stays_responsive(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.url()
    db = Database.open(url)
    _, key = db.create_key("frozen")
    db.close()
    server = ServerProcess(tmp_path / "data", env={"VARY_DATABASE_URL": url}).start()
    try:
        assert post_variation(server.base_url, key, timeout=WAIT_S).status_code == 200
        with Frozen(own_postgres) as frozen:
            answers: list[httpx.Response] = []
            # More at once than the database calls have threads: the rest must not queue for ever either.
            threads = [
                threading.Thread(target=lambda: answers.append(post_variation(server.base_url, key, timeout=WAIT_S)))
                for _ in range(12)
            ]
            for thread in threads:
                thread.start()
            # Meanwhile the server answers what needs no database.
            assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT_S).status_code == 200
            models = httpx.get(
                f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=WAIT_S
            )
            assert models.status_code == 503
            for thread in threads:
                thread.join(WAIT_S * 2)
            assert len(answers) == 12
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "database_unavailable"
                assert int(answer.headers["Retry-After"]) >= 1
            frozen.thaw()
            deadline = time.monotonic() + WAIT_S
            while (
                status := post_variation(server.base_url, key, timeout=WAIT_S).status_code
            ) != 200 and time.monotonic() < deadline:
                time.sleep(0.5)  # the stuck calls finish on their threads once the server runs again
            assert status == 200
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(("command", "table"), [(["keys", "list"], "api_keys"), (["usage"], "usage")])
def test_a_database_that_dies_during_a_command_is_one_line_and_a_failure(
    own_postgres: PostgresServer, tmp_path: Path, command: list[str], table: str
) -> None:
    url = own_postgres.url()
    Database.open(url).close()  # the schema, so the command itself has nothing to set up
    locker = own_postgres.connect("vary")  # closed by the server's death below
    with contextlib.closing(locker):
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # the command's read waits on it
        cli = subprocess.Popen(
            [sys.executable, "-m", "vary", *command, "--data-dir", str(tmp_path / "data")],
            env={**os.environ, "VARY_DATABASE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + WAIT_S
            with own_postgres.connect() as watcher:
                while not watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                ).fetchone():
                    assert cli.poll() is None and time.monotonic() < deadline, "the command never reached the table"
                    time.sleep(0.1)  # poll until the command waits on the lock
            stop(own_postgres.process)  # the database dies under the waiting command
            _, err = cli.communicate(timeout=WAIT_S)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait(WAIT_S)
    assert cli.returncode != 0
    assert "Traceback" not in err
    own_lines = [line for line in err.splitlines() if "database stopped answering" in line]
    assert len(own_lines) == 1 and own_lines[0].startswith("vary: "), err


def test_replicas_starting_at_once_on_an_empty_database_make_one_first_key(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """Each replica checks for an active key and makes one if none: the check and the making are one step
    across replicas, so however many start at once on an empty database, exactly one key is made."""
    from vary.state.first_key import first_key

    url = own_postgres.url()
    Database.open(url).close()
    replicas = 12
    databases = [Database.open(url) for _ in range(replicas)]
    for db in databases:
        db.count_active_keys()  # each replica's connection is open before the race starts
    start = threading.Barrier(replicas)
    keys: list[str | None] = [None] * replicas

    def replica(k: int) -> None:
        start.wait(WAIT_S)
        keys[k] = first_key(tmp_path / f"replica-{k}", databases[k])

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    try:
        made = [key for key in keys if key is not None]
        assert databases[0].count_active_keys() == 1
        assert len(made) == 1, f"{len(made)} replicas made a first key"
        assert databases[0].authenticate(made[0]) is not None
    finally:
        for db in databases:
            db.close()
