"""A PostgreSQL database opened by many processes and threads at once, round after round (replicas starting
together): each opener starts, the migration runs once under the advisory lock, one first key is made; and
waiting for another's migration is bounded. VARY_OPEN_STRESS_ROUNDS runs the stress test longer."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from tests.cluster.postgres import PostgresServer
from tests.openers import race, rounds
from vary.state import migrations
from vary.state.connection import DatabaseSetupError
from vary.state.database import Database

pytestmark = pytest.mark.cluster
KINDS = ("new", "old", "current")  # the database a round's openers find
OLD_REVISION = "0002_secrets_and_leases"
WAIT_S = 60


def upgraded_to(url: str, revision: str) -> None:
    """The database at `revision`, as an older vary left it."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(migrations.SCRIPTS))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


@pytest.fixture()
def databases(postgres_server: PostgresServer) -> Iterator[list[str]]:
    """One fresh database per round, made as its kind says; all dropped afterwards."""
    kinds = [KINDS[i % len(KINDS)] for i in range(rounds(len(KINDS) * 2))]
    names = [f"open_{secrets.token_hex(6)}" for _ in kinds]
    try:
        urls = []
        for name, kind in zip(names, kinds, strict=True):
            url = postgres_server.create_database(name)
            if kind == "old":
                upgraded_to(url, OLD_REVISION)
            elif kind == "current":
                Database.open(url).close()
            urls.append(url)
        yield urls
    finally:
        for name in names:
            postgres_server.drop_database(name)


def test_many_processes_and_threads_open_one_database_at_once_round_after_round(
    databases: list[str], tmp_path: Path
) -> None:
    for done in race(databases, processes=3, threads=3, data_root=tmp_path / "keys"):
        assert done.errors() == [], f"round {done.index}: {done.errors()[0]}"
        db = Database.open(done.url, migrate=False)
        try:
            assert db.revision() == migrations.head()
            assert len(done.keys_made()) == 1 and db.count_active_keys() == 1
        finally:
            db.close()


def test_waiting_for_another_replica_s_migration_is_bounded(postgres_url: str) -> None:
    """A replica migrating (here: a session holding the advisory lock) longer than the wait: a start ends in
    one line, the database unchanged; once the lock is free, the next start migrates."""
    holder = create_engine(postgres_url)
    try:
        with holder.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrations.ADVISORY_LOCK_KEY})
            db = Database(postgres_url)
            raised: list[BaseException] = []

            def start() -> None:
                try:
                    db.set_up(deadline=time.monotonic() + 1.0)
                except BaseException as exc:  # noqa: BLE001 - checked below
                    raised.append(exc)

            starting = threading.Thread(target=start)  # a thread: a wait that is not bounded fails, not hangs
            starting.start()
            starting.join(WAIT_S)
            unbounded = starting.is_alive()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrations.ADVISORY_LOCK_KEY})
            starting.join(WAIT_S)
            try:
                assert not unbounded, f"the start still waited after {WAIT_S} s"
                assert db.revision() is None
            finally:
                db.close()
    finally:
        holder.dispose()
    assert len(raised) == 1 and isinstance(raised[0], DatabaseSetupError), raised
    message = str(raised[0])
    assert "another process has been upgrading its schema for over 1 s" in message and "\n" not in message
    db = Database.open(postgres_url)
    try:
        assert db.revision() == migrations.head()
    finally:
        db.close()
