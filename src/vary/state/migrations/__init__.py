"""vary's schema, migrated by Alembic: driven from code, with the scripts inside the package.

Users run no `alembic` command and need no alembic.ini: `Database` upgrades to the head revision when it
opens (the server before it serves, `vary keys`, `vary usage`), and `vary db upgrade` does it alone.

Several replicas starting at once on one database must not migrate twice. The whole upgrade runs in one
transaction that first takes a lock every other migrating process waits on, for a bounded time:
- PostgreSQL: `pg_advisory_xact_lock`, the transaction-scoped advisory lock (released by the commit or
  rollback, or by the server when the connection dies, so a crashed replica never leaves it held), waited
  for up to the caller's `wait_seconds` (lock_timeout applies to advisory locks too). Its DDL is
  transactional, so a failed upgrade leaves nothing half done.
- SQLite: `BEGIN IMMEDIATE`, which takes the database's write lock at once; SQLite's DDL is
  transactional too. A second process waits on the lock (the busy timeout), then finds the head; a step
  SQLite answers with "try again" instead of waiting is tried again (vary.state.sqlite_setup).
Either way the revision is read after the lock is held, so the second process finds nothing to do.
Other databases SQLAlchemy speaks to run the same upgrade in one transaction, without a lock.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from vary.state.connection import SETUP_WAIT_SECONDS, DatabaseSetupError, shown

SCRIPTS = Path(__file__).parent
# The advisory lock's key: any fixed 64-bit number, the same in every vary process ("vary" in ASCII).
ADVISORY_LOCK_KEY = 0x76617279
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout that expired


class _OnlyTheUpgrades(logging.Filter):
    """Alembic logs which dialect it found each time it looks; the revisions it runs are worth a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Context impl", "Will assume"))


logging.getLogger("alembic.runtime.migration").addFilter(_OnlyTheUpgrades())


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head() -> str:
    """The newest revision of the schema this vary knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, "the migration scripts have one head"
    return revision


@functools.cache
def revisions() -> frozenset[str]:
    """Every revision this vary has a migration script for."""
    return frozenset(script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions())


def known(revision: str) -> bool:
    """Whether this vary knows `revision`; one it does not was made by a newer vary."""
    return revision in revisions()


def current(engine: Engine) -> str | None:
    """The database's revision; None for an empty database or one made before vary used Alembic."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, *, wait_seconds: float = SETUP_WAIT_SECONDS) -> None:
    """Upgrades to the head in one locked transaction; a database already there is left as it is.

    `engine` must be made for it (db.migration_engine): on SQLite its transactions begin IMMEDIATE.
    `wait_seconds`: how long PostgreSQL waits for another process's upgrade (SQLite: the engine's timeout).
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            _wait_for_the_lock(connection, wait_seconds)
        # env.py runs the migrations on this connection, inside this transaction.
        command.upgrade(_config(connection), "head")


def _wait_for_the_lock(connection: Connection, wait_seconds: float) -> None:
    """The advisory lock, waited for up to `wait_seconds`; the migration itself then waits as it did."""
    wait_ms = max(1, int(wait_seconds * 1000))
    connection.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{wait_ms}ms"})
    try:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        raise DatabaseSetupError(
            f"cannot use the database {shown(connection.engine.url)}: another process has been upgrading its "
            f"schema for over {wait_seconds:.0f} s (it holds the advisory lock {ADVISORY_LOCK_KEY}); try again once "
            "it has finished"
        ) from None
    connection.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
