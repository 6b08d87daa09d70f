"""A real PostgreSQL for tests: Debian's server binaries, a throwaway cluster on a free loopback port.

`postgres_server` (session): `initdb` in a temp dir, `postgres` listening on 127.0.0.1 only, its unix
socket in that dir, trust authentication (nothing but this machine reaches it); stopped by its own process
id at the end (SIGINT: PostgreSQL's fast shutdown; SIGKILL if it has not exited in time).
`postgres_url` (function): a fresh database per test, dropped afterwards, so tests never see each other's
rows. Test modules import both: `from tests.cluster.postgres import postgres_server, postgres_url`.

When the tests run as root, the server runs as the `postgres` user (PostgreSQL refuses to run as root):
the process is started with that user's uid and gid directly, so the child is the postmaster itself and
its pid is the one to stop. Its temp dir is made under the system temp dir, not pytest's (which is
private to root), and handed to that user.

Skipped when PostgreSQL's server or the psycopg driver is missing, unless VARY_REQUIRE_POSTGRES=1 (CI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vary.testing import free_port

WAIT_S = 60
USER = "postgres"  # the superuser initdb makes, and the OS user the server runs as under root
DATABASE = "vary"


def bindir() -> Path | None:
    """The directory of Debian's `initdb` and `postgres` (not on PATH: /usr/lib/postgresql/<version>/bin)."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            candidates.append(
                subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
            )
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    return None


def _require() -> Path:
    required = os.environ.get("VARY_REQUIRE_POSTGRES") == "1"
    found = bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("VARY_REQUIRE_POSTGRES=1 but psycopg is not installed (pip install -e '.[cluster]')")
        pytest.skip("psycopg is not installed (pip install -e '.[cluster]')")
    if found is None:
        if required:
            pytest.fail("VARY_REQUIRE_POSTGRES=1 but PostgreSQL's initdb/postgres were not found")
        pytest.skip("PostgreSQL is not installed (apt install postgresql); .ci/run installs it")
    return found


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A psycopg connection in autocommit (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname=database, autocommit=True, connect_timeout=5
        )

    def create_database(self, name: str) -> str:
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that run the child as the postgres user when we are root; none otherwise."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@pytest.fixture(scope="package")  # stopped once tests/cluster is done: the rest of the suite runs without it
def postgres_server() -> Iterator[PostgresServer]:
    with started_postgres() as server:
        yield server


@contextlib.contextmanager
def started_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own, with the `vary` database made; stopped (if still running) on leaving."""
    bin_dir = _require()
    workdir = Path(tempfile.mkdtemp(prefix="vary-postgres-"))
    as_user = _as_postgres_user()
    if as_user:
        os.chown(workdir, as_user["user"], as_user["group"])
    data = workdir / "data"
    log_path = workdir / "server.log"
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, env=env, cwd=workdir, timeout=WAIT_S, **as_user,
    )  # fmt: skip
    port = free_port()
    with open(log_path, "wb") as log:
        if as_user:
            os.chown(log_path, as_user["user"], as_user["group"])
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(workdir),
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
             # A test cluster: durability is not wanted, speed is.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, **as_user,
        )  # fmt: skip
    server = PostgresServer(port, process, log_path)
    try:
        _wait_ready(server)
        server.create_database(DATABASE)
        yield server
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + WAIT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.process.returncode}:\n{server.log()}")
        try:
            server.connect().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections in {WAIT_S}s:\n{server.log()}") from None
            time.sleep(0.1)  # readiness poll, bounded by the deadline


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # fast shutdown: roll back sessions, stop
    try:
        process.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(WAIT_S)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of its own for one test."""
    name = f"test_{secrets.token_hex(6)}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)
