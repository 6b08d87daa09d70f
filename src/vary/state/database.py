"""The database: API keys (hashed), one usage row per variation request, shared secrets and leases.

Each concern is its own small part (keys.py, usage.py, shared_secrets.py, leases.py) over one engine
(connection.py) and one schema (schema.py, Alembic's revisions in migrations/). `Database.open` opens it
and upgrades its schema first: the server does so at start, before serving; `vary keys`, `vary usage`
and `vary db upgrade` too. Opening a database starts no thread: the server starts the usage spool's
writer (`start_spool_writer`) itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from vary.state import migrations
from vary.state.connection import (
    SETUP_WAIT_SECONDS,
    DatabaseSetupError,
    database_url,
    engine_for,
    migration_engine,
    shown,
    sqlite_file,
)
from vary.state.keys import Keys
from vary.state.leases import Leases
from vary.state.schema import WriteProbeRow
from vary.state.shared_secrets import SharedSecrets
from vary.state.sqlite_setup import contended, retried, use_wal
from vary.state.usage import Usage
from vary.state.usage_spool import UsageSpool


def newer_schema(revision: str) -> str:
    return (
        f"the database's schema is {revision}, newer than this vary knows (its head is {migrations.head()}): "
        "a newer vary migrated it; run that version (vary never downgrades a schema)"
    )


class Database(Keys, Usage, SharedSecrets, Leases):
    def __init__(
        self,
        url: str | URL | Path,
        *,
        busy_timeout_seconds: float = 10.0,
        statement_timeout_seconds: float | None = None,
        spool_path: Path | None = None,
        spool_max_rows: int = 100_000,
    ) -> None:
        """`url`: a SQLAlchemy URL, or a SQLite file's path. Builds the engine; connects, migrates and starts nothing.

        `statement_timeout_seconds` (PostgreSQL): a statement running longer is cancelled; None: no limit.
        `spool_path`: where usage rows wait while the database cannot take them (the server's).
        """
        try:
            self.url = database_url(url)
        except (ArgumentError, ValueError) as exc:
            raise DatabaseSetupError.of(url, exc) from exc
        try:
            self.engine: Engine = engine_for(
                self.url, busy_timeout_seconds=busy_timeout_seconds, statement_timeout_seconds=statement_timeout_seconds
            )
        except (ImportError, SQLAlchemyError, OSError) as exc:
            raise DatabaseSetupError.of(url, exc) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.spool = UsageSpool(spool_path, max_rows=spool_max_rows) if spool_path is not None else None

    @classmethod
    def open(cls, url: str | URL | Path, *, migrate: bool = True, **options: Any) -> Database:
        """The database, its schema upgraded to the head first (unless `migrate` is False): how vary opens it.

        Any number of processes and threads may open one database at once: the setup (a SQLite file's
        switch to WAL, the migration) is done once, and the others wait for it, up to SETUP_WAIT_SECONDS.
        Raises DatabaseSetupError with one line when it cannot be used.
        """
        db = cls(url, **options)
        if migrate:
            try:
                db.set_up(deadline=time.monotonic() + SETUP_WAIT_SECONDS)
            except (ImportError, SQLAlchemyError, OSError) as exc:
                db.engine.dispose()
                raise DatabaseSetupError.of(url, exc) from exc
            except DatabaseSetupError:
                db.engine.dispose()
                raise
        return db

    def set_up(self, *, deadline: float) -> None:
        """The one-time setup, waiting for another opener's until `deadline` (time.monotonic()): on SQLite each
        step tried again while SQLite says it is contended (sqlite_setup.py); PostgreSQL waits on its lock."""
        started = time.monotonic()
        engine = migration_engine(self.url, wait_seconds=max(0.0, deadline - started))
        try:
            if sqlite_file(self.url) is not None:
                retried(lambda: use_wal(engine), deadline)
            self.upgrade(engine, deadline=deadline)
        except OperationalError as exc:
            if not contended(exc):
                raise
            raise DatabaseSetupError(
                f"cannot use the database {shown(self.url)}: another process held it locked for "
                f"{time.monotonic() - started:.0f} s (a schema upgrade, or a long write); try again once it is done"
            ) from exc
        finally:
            engine.dispose()

    def upgrade(self, engine: Engine, *, deadline: float) -> None:
        """The schema at the head revision; a database already there is only read (the common case).

        `engine`: connection.migration_engine's, for this database.
        """
        revision = retried(lambda: migrations.current(self.engine), deadline)
        if revision == migrations.head():
            return
        if revision is not None and not migrations.known(revision):
            # A newer vary migrated it (a rolled-back deploy): never downgrade, never run on a schema unknown.
            raise DatabaseSetupError(newer_schema(revision))
        retried(lambda: migrations.upgrade(engine, wait_seconds=max(0.0, deadline - time.monotonic())), deadline)

    def revision(self) -> str | None:
        return migrations.current(self.engine)

    def close(self) -> None:
        if self._writer is not None:
            self.stop_spool_writer()
            self.write_spool()  # one last try; what remains stays in the spool file for the next start
        self.engine.dispose()

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    def check_writable(self) -> None:
        """A real write, under the short busy timeout: raises when the database cannot take one now."""
        with self.session() as s:
            s.merge(WriteProbeRow(id=1, written_at=time.time()))
