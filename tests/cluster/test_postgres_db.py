"""vary's database on a real PostgreSQL: the schema by Alembic equals the models, keys and usage work, a
locked table spools usage rows instead of holding the caller, leases go to one holder at a time, and the
URL-signing secret is made once and shared, even by processes starting at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy import inspect

from tests.cluster.postgres import PostgresServer
from vary.key_limits import KeyLimits
from vary.settings import Settings
from vary.state import migrations
from vary.state.connection import shown
from vary.state.database import Database
from vary.state.schema import Base, SecretRow, UsageRow
from vary.state.signing import DB_SECRET_NAME, secret_for

pytestmark = pytest.mark.cluster
WAIT_S = 120


def usage(key_id: str, n: int = 1, **values: object) -> UsageRow:
    return UsageRow(created_at=time.time(), key_id=key_id, n=n, status=200, latency_ms=5.0, **values)


def test_migrated_to_the_head_and_equal_to_the_models(postgres_url: str) -> None:
    db = Database.open(postgres_url)
    try:
        assert db.revision() == migrations.head()
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert set(inspect(db.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        db.close()
    Database.open(postgres_url).close()  # again: nothing to do
    db = Database.open(postgres_url, migrate=False)
    try:
        migrations.upgrade(db.engine)  # the upgrade itself, at the head, runs nothing
        assert db.revision() == migrations.head()
    finally:
        db.close()


def test_keys_and_usage(postgres_url: str) -> None:
    db = Database.open(postgres_url)
    try:
        info, key = db.create_key("ci", limits=KeyLimits(image_quota=5))
        admin, _ = db.create_key("boss", admin=True)
        assert db.authenticate(key) == info and db.authenticate(key + "x") is None
        assert db.count_active_keys() == 2 and [k.name for k in db.list_keys()] == ["ci", "boss"]
        assert db.list_keys()[1].admin and not db.list_keys()[0].admin
        assert db.update_key(info.id, image_quota=None, max_concurrent=2) is not None
        assert db.authenticate(key).limits == KeyLimits(max_concurrent=2)  # type: ignore[union-attr]
        db.record_usage(usage(info.id, 2, user="ü", request_id="r1", target="tiny", attempts=1, targets_tried="a:1"))
        db.record_usage(usage(info.id, 3))
        db.record_usage(UsageRow(created_at=time.time(), key_id=info.id, n=4, status=500, latency_ms=1.0))
        assert db.images_made(info.id, since=0) == 5
        rows = db.usage_rows(key_id=info.id)
        assert [(r.n, r.user, r.request_id) for r in rows] == [(2, "ü", "r1"), (3, None, None), (4, None, None)]
        assert db.usage_rows(user="ü")[0].targets_tried == "a:1"
        db.check_writable()
        db.check_writable()
        db.ping()
        assert db.revoke_key(info.id) and not db.revoke_key("nope")
        assert db.authenticate(key) is None and db.count_active_keys() == 1
        assert admin.id in {k.id for k in db.list_keys() if k.revoked_at is None}
    finally:
        db.close()


def test_a_locked_usage_table_spools_rows_and_they_are_written_later(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    """The server's short lock timeout: a usage row the database cannot take at once goes to the spool."""
    db = Database.open(
        postgres_url, busy_timeout_seconds=0.2, statement_timeout_seconds=5, spool_path=tmp_path / "spool"
    )
    assert db.spool is not None
    db.start_spool_writer()  # as the server does
    database = postgres_url.rsplit("/", 1)[1]
    try:
        info, key = db.create_key("spooled")
        locker = postgres_server.connect(database)
        try:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE usage IN EXCLUSIVE MODE")  # reads go on, writes wait
            db.record_usage(usage(info.id, 2, request_id="while-locked"))
            assert len(db.spool) == 1 and (tmp_path / "spool").read_text().count("\n") == 1
            assert db.authenticate(key) == info  # requests are still served
            assert db.images_made(info.id, since=0) == 2  # and the quota counts the spooled row
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        deadline = time.monotonic() + WAIT_S
        while len(db.spool) and time.monotonic() < deadline:  # the writer thread retries every second
            time.sleep(0.1)
        assert len(db.spool) == 0
        assert [r.request_id for r in db.usage_rows(key_id=info.id)] == ["while-locked"]
    finally:
        db.close()


def test_a_lease_has_one_holder_at_a_time(postgres_url: str) -> None:
    db = Database.open(postgres_url)
    try:
        assert db.try_lease("sweep", "a", 60)
        assert not db.try_lease("sweep", "b", 60)
        assert db.try_lease("sweep", "a", 60)  # renewed by its holder
        assert db.try_lease("other", "b", 60)  # another lease is another row
        db.release_lease("sweep", "b")  # not b's to give up
        assert not db.try_lease("sweep", "b", 60)
        db.release_lease("sweep", "a")
        assert db.try_lease("sweep", "b", 0.0)  # free again; b takes it, for no time at all
        assert db.try_lease("sweep", "a", 60)  # expired: a takes it back
        assert not db.try_lease("sweep", "b", 60)
    finally:
        db.close()


def test_racing_holders_get_one_lease(postgres_url: str) -> None:
    """Eight holders, each with its own connections, try at the same moment, for a new lease and then for an
    expired one: exactly one wins each time."""
    databases = [Database.open(postgres_url) for _ in range(8)]
    try:
        for name, seconds_before in (("new", None), ("expired", 0.0)):
            if seconds_before is not None:
                assert databases[0].try_lease(name, "before", seconds_before)
            start = threading.Barrier(len(databases))
            won: list[str] = []

            def take(
                db: Database, holder: str, lease: str = name, start: threading.Barrier = start, won: list[str] = won
            ) -> None:
                start.wait()
                if db.try_lease(lease, holder, 60):
                    won.append(holder)

            threads = [threading.Thread(target=take, args=(db, f"h{i}")) for i, db in enumerate(databases)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT_S)
            assert len(won) == 1, (name, won)
            assert not databases[0].try_lease(name, "late", 60)
    finally:
        for db in databases:
            db.close()


SECRET_OF = (
    "import sys\n"
    "from vary.state.database import Database\n"
    "from vary.settings import Settings\n"
    "from vary.state.signing import secret_for\n"
    "settings = Settings(database_url=sys.argv[1], data_dir=sys.argv[2])\n"
    "sys.stdin.readline()\n"  # all start together
    "db = Database.open(settings.database)\n"
    "print(secret_for(settings, db).hex())\n"
    "db.close()\n"
)


def test_processes_starting_at_once_share_one_secret(postgres_url: str, tmp_path: Path) -> None:
    """Four processes on a fresh database: they race the migration (the advisory lock) and the secret's
    insert; all of them end up with the same secret, kept in the database, and no file is written."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SECRET_OF, postgres_url, str(tmp_path / f"data{i}")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(4)
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=WAIT_S) for process in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err for _, err in outputs]
    secrets = {out.strip() for out, _ in outputs}
    assert len(secrets) == 1 and len(bytes.fromhex(secrets.pop())) == 32
    assert not any((tmp_path / f"data{i}" / "secret").exists() for i in range(4))
    db = Database.open(postgres_url)
    try:
        with db.session() as s:
            assert s.query(SecretRow).count() == 1
        settings = Settings(database_url=postgres_url, data_dir=tmp_path / "again")
        assert secret_for(settings, db).hex() == outputs[0][0].strip()  # and the same after a restart
    finally:
        db.close()


def test_vary_signing_secret_wins(postgres_url: str, tmp_path: Path) -> None:
    given = "s" * 40
    db = Database.open(postgres_url)
    try:
        for database_url in (postgres_url, None):
            settings = Settings(database_url=database_url, data_dir=tmp_path, signing_secret=SecretStr(given))
            assert secret_for(settings, db) == given.encode()
        with db.session() as s:
            assert s.get(SecretRow, DB_SECRET_NAME) is None
        assert not (tmp_path / "secret").exists()
    finally:
        db.close()
    short = subprocess.run(
        [sys.executable, "-m", "vary", "keys", "list", "--database-url", postgres_url],
        capture_output=True, text=True, timeout=WAIT_S,
        env={**os.environ, "VARY_SIGNING_SECRET": "too-short-to-sign-with"},
    )  # fmt: skip
    assert short.returncode != 0 and "at least 32 characters" in short.stderr
    assert "too-short-to-sign-with" not in short.stderr and "Traceback" not in short.stderr


def test_the_cli_on_postgres_never_shows_the_password(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """`vary db upgrade` and `vary keys` on a PostgreSQL URL; a password in it is never printed."""
    database = "cli_password"
    postgres_server.create_database(database)
    with postgres_server.connect() as connection:
        connection.execute("ALTER USER postgres PASSWORD 'hunter2-not-shown'")  # trust auth ignores it
    url = postgres_server.url(database).replace("postgres@", "postgres:hunter2-not-shown@")
    try:

        def vary(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "vary", *args, "--database-url", url, "--data-dir", str(tmp_path)]
            return subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S)

        current = vary("db", "current")
        assert current.returncode == 0 and current.stdout.startswith("none"), current.stderr
        upgraded = vary("db", "upgrade")
        assert upgraded.returncode == 0 and upgraded.stdout.strip() == f"{migrations.head()} (the head)"
        created = vary("keys", "create", "--name", "pg")
        assert created.returncode == 0, created.stderr
        listed = vary("keys", "list")
        assert "pg" in listed.stdout and "active" in listed.stdout
        assert vary("usage", "--format", "json").returncode == 0
        for run in (current, upgraded, created, listed):
            assert "hunter2" not in run.stdout + run.stderr
            assert shown(url) in run.stderr and "***" in run.stderr
        assert not (tmp_path / "vary.db").exists()
    finally:
        postgres_server.drop_database(database)


def test_a_server_that_vanishes_mid_request_is_noticed_by_the_socket_not_minutes_later(postgres_url: str) -> None:
    """A host gone (a crash, a partition, a failover's moved address) answers nothing, not even a reset: without
    TCP keepalives and a user timeout, Linux retries an unanswered send for ~15 minutes and a request with it.
    Every connection vary opens asks libpq for both (the statement timeout cannot help: the server is gone)."""
    db = Database.open(postgres_url)
    try:
        with db.engine.connect() as connection:
            parameters = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert parameters["keepalives"] == "1" and int(parameters["keepalives_idle"]) <= 10
        assert 0 < int(parameters["tcp_user_timeout"]) <= 30_000
    finally:
        db.close()


def test_a_usage_row_postgresql_would_refuse_is_stored_and_holds_no_other(postgres_url: str, tmp_path: Path) -> None:
    """A client's `user` with a NUL (PostgreSQL refuses NUL in text; SQLite takes it) or longer than its
    column (VARY_MAX_USER_CHARS raised): its row is stored cleaned, and the spool behind it drains."""
    db = Database.open(postgres_url, spool_path=tmp_path / "spool")
    assert db.spool is not None
    db.start_spool_writer()  # as the server does
    try:
        for user in ("a\x00b", "u" * 300, "plain"):
            db.record_usage(usage("k1", user=user))
        deadline = time.monotonic() + WAIT_S
        while len(db.spool) and time.monotonic() < deadline:  # the writer thread retries every second
            time.sleep(0.1)
        assert len(db.spool) == 0
        assert [r.user for r in db.usage_rows(key_id="k1")] == ["a\ufffdb", "u" * 256, "plain"]
    finally:
        db.close()


def test_a_usage_filter_with_a_nul_finds_its_rows_instead_of_failing(postgres_url: str) -> None:
    """`GET /v1/admin/usage?user=a%00b` and `vary usage --user`: PostgreSQL refuses a NUL in a parameter too."""
    db = Database.open(postgres_url)
    try:
        db.record_usage(usage("k\x00", user="a\x00b"))
        assert [r.user for r in db.usage_rows(user="a\x00b")] == ["a\ufffdb"]
        assert len(db.usage_rows(key_id="k\x00")) == 1
    finally:
        db.close()


def test_usage_groups_and_secret_rotation_on_postgresql(postgres_url: str) -> None:
    """The admin API's SQL summary (window functions, nearest-rank percentiles) equals summing the rows in
    Python, on PostgreSQL as on SQLite; and `vary secret rotate`'s two rows change in one transaction."""
    from vary.ops.usage_report import summarise, summary_of
    from vary.state.signing import DB_PREVIOUS_SECRET_NAME

    db = Database.open(postgres_url)
    try:
        for i in range(60):
            status = 200 if i % 4 else 500
            latency = float(i * 7 % 61)
            db.record_usage(
                UsageRow(created_at=time.time(), key_id=f"g{i % 3}", user=f"u{i % 2}", model="m", n=i % 5 + 1,
                         status=200, latency_ms=latency)
            )  # fmt: skip
            db.record_usage(
                UsageRow(created_at=time.time(), key_id=f"g{i % 3}", n=1, status=status, latency_ms=latency)
            )
        rows = [row for row in db.usage_rows() if (row.key_id or "").startswith("g")]
        want = summarise(rows)
        got = [summary_of(g) for g in db.usage_groups() if (g.key_id or "").startswith("g")]
        assert got == want
        assert [summary_of(g) for g in db.usage_groups(key_id="g1", limit=1, offset=1)] == [
            s for s in want if s.key_id == "g1"
        ][1:2]

        first = db.shared_secret(DB_SECRET_NAME, lambda: b"f" * 32)
        db.rotate_secret(DB_SECRET_NAME, DB_PREVIOUS_SECRET_NAME, b"n" * 32)
        assert db.stored_secret(DB_PREVIOUS_SECRET_NAME) == first
        assert db.stored_secret(DB_SECRET_NAME) == b"n" * 32
    finally:
        db.close()
