"""The schema by Alembic: databases made by earlier vary versions (no alembic_version table, some columns
missing) are brought up to the head with their rows; upgrading again changes nothing; the migrated schema
is exactly the ORM models' (db.Base.metadata); `vary db upgrade|current` work; the SQLite default is what
it was (vary.db and the `secret` file in the data dir).

The old schemas are the DDL real databases of those versions hold, read back from their sqlite_master:
OLD_SCHEMA from a9a2a65 (the last vary without Alembic), OLDEST_SCHEMA from b0c524d (the first).
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from vary.settings import Settings
from vary.state import migrations
from vary.state.database import Database
from vary.state.schema import Base, UsageRow
from vary.state.signing import secret_for

OLD_SCHEMA = """
CREATE TABLE api_keys (
	id VARCHAR(16) NOT NULL,
	name VARCHAR(200) NOT NULL,
	key_hash VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	revoked_at FLOAT,
	admin BOOLEAN DEFAULT '0' NOT NULL,
	requests_per_minute INTEGER,
	images_per_minute INTEGER,
	max_concurrent INTEGER,
	image_quota INTEGER,
	PRIMARY KEY (id)
);
CREATE TABLE usage (
	id INTEGER NOT NULL,
	created_at FLOAT NOT NULL,
	key_id VARCHAR(16),
	user VARCHAR(256),
	model VARCHAR(200),
	n INTEGER,
	size VARCHAR(16),
	response_format VARCHAR(16),
	status INTEGER NOT NULL,
	latency_ms FLOAT NOT NULL,
	request_id VARCHAR(128),
	target VARCHAR(200),
	attempts INTEGER,
	targets_tried VARCHAR(1000),
	PRIMARY KEY (id)
);
CREATE INDEX ix_usage_created_at ON usage (created_at);
CREATE INDEX ix_usage_key_id ON usage (key_id);
CREATE TABLE write_probe (
	id INTEGER NOT NULL,
	written_at FLOAT NOT NULL,
	PRIMARY KEY (id)
);
"""

OLDEST_SCHEMA = """
CREATE TABLE api_keys (
	id VARCHAR(16) NOT NULL,
	name VARCHAR(200) NOT NULL,
	key_hash VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	revoked_at FLOAT,
	PRIMARY KEY (id)
);
CREATE TABLE usage (
	id INTEGER NOT NULL,
	created_at FLOAT NOT NULL,
	key_id VARCHAR(16),
	user VARCHAR(256),
	model VARCHAR(200),
	n INTEGER,
	size VARCHAR(16),
	response_format VARCHAR(16),
	status INTEGER NOT NULL,
	latency_ms FLOAT NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_usage_created_at ON usage (created_at);
CREATE INDEX ix_usage_key_id ON usage (key_id);
"""

OLD_KEY = "vary-0ld0ld00-a-secret-made-by-an-older-vary"


def old_database(path: Path, schema: str) -> None:
    """A database as an older vary left it: its tables, a key and two usage rows, no alembic_version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.executescript(schema)
        connection.execute(
            "INSERT INTO api_keys (id, name, key_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, NULL)",
            ("0ld0ld00", "old", hashlib.sha256(OLD_KEY.encode()).hexdigest(), 1_700_000_000.0),
        )
        connection.executemany(
            "INSERT INTO usage (created_at, key_id, user, model, n, size, response_format, status, latency_ms) "
            "VALUES (?, '0ld0ld00', 'u', 'kandinsky-2.2', ?, '256x256', 'url', ?, 12.5)",
            [(1_700_000_001.0, 2, 200), (1_700_000_002.0, 1, 500)],
        )
    connection.close()


def schema_of(path: Path) -> list[tuple[str, str]]:
    connection = sqlite3.connect(path)
    try:
        return sorted(connection.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())
    finally:
        connection.close()


def columns_of(path: Path, table: str) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
    finally:
        connection.close()


def model_columns(table: str) -> set[str]:
    return {column.name for column in Base.metadata.tables[table].columns}


def check_upgraded_with_rows(path: Path) -> None:
    db = Database.open(path)
    try:
        assert db.revision() == migrations.head()
        for table in ("api_keys", "usage", "write_probe", "secrets", "leases"):
            assert columns_of(path, table) == model_columns(table), table
        key = db.authenticate(OLD_KEY)
        assert key is not None and key.id == "0ld0ld00" and key.name == "old" and not key.admin
        rows = db.usage_rows(key_id="0ld0ld00")
        assert [(r.created_at, r.n, r.status, r.latency_ms, r.request_id) for r in rows] == [
            (1_700_000_001.0, 2, 200, 12.5, None),
            (1_700_000_002.0, 1, 500, 12.5, None),
        ]
        # The new columns and tables take writes.
        db.record_usage(
            UsageRow(created_at=1_700_000_003.0, key_id="0ld0ld00", status=200, latency_ms=1.0, n=1, target="t")
        )
        assert db.images_made("0ld0ld00", since=0) == 3
        assert db.try_lease("sweep", "me", 60)
        db.check_writable()
    finally:
        db.close()


# Columns the revisions after the baseline add (SQLite's ADD COLUMN appends them to the table's SQL).
LATER_COLUMNS = (", safety VARCHAR(16)", ", policy VARCHAR(1000)", ", unused_images INTEGER")  # 0003, 0004


def without_later_columns(sql: str) -> str:
    for column in LATER_COLUMNS:
        sql = sql.replace(column, "")
    return sql


def test_the_last_schema_before_alembic_is_adopted_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "data" / "vary.db"
    old_database(path, OLD_SCHEMA)
    before = dict(schema_of(path))
    check_upgraded_with_rows(path)
    after = dict(schema_of(path))
    for name in ("api_keys", "usage", "write_probe", "ix_usage_created_at", "ix_usage_key_id"):
        assert without_later_columns(after[name]) == before[name], f"{name} was changed, not adopted"
    assert {"alembic_version", "secrets", "leases"} <= set(after)


def test_an_older_schema_gets_its_missing_columns_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "vary.db"
    old_database(path, OLDEST_SCHEMA)
    assert "admin" not in columns_of(path, "api_keys") and "request_id" not in columns_of(path, "usage")
    check_upgraded_with_rows(path)


def test_upgrading_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "vary.db"
    old_database(path, OLDEST_SCHEMA)
    Database.open(path).close()
    once = schema_of(path)
    Database.open(path).close()  # the usual path: the revision is read, nothing is run
    engine = create_engine(f"sqlite:///{path}")
    try:
        migrations.upgrade(engine)  # and the upgrade itself, run at the head, runs nothing
        assert migrations.current(engine) == migrations.head()
    finally:
        engine.dispose()
    assert schema_of(path) == once
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT count(*) FROM usage").fetchone() == (2,)
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrations.head(),)]
    finally:
        connection.close()


def test_the_migrated_schema_is_the_models(tmp_path: Path) -> None:
    """A revision forgotten after a model change fails here: compare_metadata lists every difference."""
    db = Database.open(tmp_path / "vary.db")
    try:
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert set(inspect(db.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        db.close()


def test_processes_upgrading_one_old_database_at_once_both_succeed(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: one migrates, the other waits for it, then finds the head and does nothing."""
    path = tmp_path / "vary.db"
    old_database(path, OLDEST_SCHEMA)
    script = (
        "import sys, pathlib; from vary.state.database import Database\n"
        "d = Database.open(pathlib.Path(sys.argv[1])); print(d.revision()); d.close()"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()
        assert out.decode().strip() == migrations.head()
    check_upgraded_with_rows(path)


def test_threads_opening_one_new_database_at_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "vary.db"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Database.open(path).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert columns_of(path, "leases") == model_columns("leases")


def vary_db(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vary", "db", *args], capture_output=True, text=True, timeout=120)


def test_vary_db_upgrade_and_current(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "old.db"
    old_database(path, OLDEST_SCHEMA)
    url = f"sqlite:///{path}"
    data_dir = str(tmp_path / "data")
    current = vary_db("current", "--database-url", url, "--data-dir", data_dir)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("none") and f"database {url}" in current.stderr
    assert "admin" not in columns_of(path, "api_keys")  # `current` changes nothing
    upgraded = vary_db("upgrade", "--database-url", url, "--data-dir", data_dir)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"{migrations.head()} (the head)"
    assert not (tmp_path / "data" / "vary.db").exists()  # the URL's database, not the data dir's
    check_upgraded_with_rows(path)
    again = vary_db("current", "--database-url", url, "--data-dir", data_dir)
    assert again.stdout.strip() == f"{migrations.head()} (the head)"


def test_the_sqlite_default_is_unchanged(tmp_path: Path) -> None:
    """No database_url: vary.db and the signing secret's file in the data dir, as before Alembic."""
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.database == tmp_path / "data" / "vary.db"
    db = Database.open(settings.database)
    try:
        secret = secret_for(settings, db)
        assert (tmp_path / "data" / "secret").read_bytes() == secret and len(secret) == 32
        assert secret_for(settings, db) == secret
        with db.session() as s:
            assert s.query(Base.metadata.tables["secrets"]).count() == 0  # the file, not the table
    finally:
        db.close()
    assert (tmp_path / "data" / "vary.db").is_file()
    upgraded = vary_db("upgrade", "--data-dir", str(tmp_path / "data"))
    assert upgraded.returncode == 0 and upgraded.stdout.strip() == f"{migrations.head()} (the head)"


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("nonsense", "vary: VARY_DATABASE_URL is not a database URL: SQLAlchemy's form"),
        ("postgresql+psycopg://u:hunter2@localhost:notaport/db", "vary: VARY_DATABASE_URL is not a database URL"),
        ("mysql://u:hunter2@127.0.0.1:1/db", "vary: the driver for mysql://u:***@127.0.0.1:1/db is not installed"),
        ("sqlite:////proc/no-such-dir/vary.db", "vary: cannot use the database sqlite:////proc/no-such-dir/vary.db: "),
        (
            "postgresql+psycopg://u@127.0.0.1:1/db?sslmode=disable&password=hunter2&sslpassword=hunter2",
            "vary: cannot use the database postgresql+psycopg://u@127.0.0.1:1/db?password=***&sslmode=disable&ssl",
        ),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line_never_a_traceback(tmp_path: Path, url: str, line: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vary", "keys", "list", "--data-dir", str(tmp_path), "--database-url", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(line), done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_a_schema_newer_than_this_vary_is_refused_in_one_line_never_downgraded(tmp_path: Path) -> None:
    """A rolled-back deploy: the database was migrated by a newer vary. Nothing starts, nothing is changed."""
    path = tmp_path / "newer.db"
    Database.open(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_from_a_newer_vary'")
    url = f"sqlite:///{path}"
    for command in (["keys", "list"], ["db", "upgrade"]):
        done = subprocess.run(
            [sys.executable, "-m", "vary", *command, "--data-dir", str(tmp_path), "--database-url", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("vary: the database's schema is 9999_from_a_newer_vary, newer than this vary"), last
        assert "Traceback" not in done.stderr
    current = vary_db("current", "--database-url", url, "--data-dir", str(tmp_path))
    assert current.returncode == 0 and current.stdout.strip() == (
        f"9999_from_a_newer_vary (newer than this vary's head {migrations.head()})"
    )
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999_from_a_newer_vary",)]
