"""Reaching a database by URL: engines with the request path's timeouts, sessions, and errors said in one line.

Any SQLAlchemy URL: the default is a SQLite file in the data dir; replicas share a PostgreSQL database
(`postgresql+psycopg://...`). On SQLite the busy timeout is SQLite's own; on PostgreSQL it is the lock
timeout, with a statement timeout behind it, so a locked or stuck server fails a statement (and a usage
row is spooled) instead of holding requests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from vary.datadir import PRIVATE_DIR_MODE, make_private_file, narrow_private_file
from vary.errors import DatabaseUnavailable

log = logging.getLogger("vary.usage")
log = logging.getLogger("vary.usage")
# PostgreSQL: how long opening a connection may take (libpq counts whole seconds, at least 2).
CONNECT_TIMEOUT_SECONDS = 5
# PostgreSQL: connections kept per process, and how many more a burst may open. The server's threadpool
# runs the database calls (40 threads at most); a request waits this long for a free connection.
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 20
POOL_TIMEOUT_SECONDS = 10.0
# How long opening a database waits for another process's or thread's setup of it (the switch to WAL, a
# migration) before it gives up with one line: time enough for any migration vary has shipped.
SETUP_WAIT_SECONDS = 60.0
# PostgreSQL: a server host that vanishes (a crash, a partition, a failover's moved address) sends nothing,
# not even a reset, and Linux retries an unanswered send for ~15 minutes. TCP keepalives and a user timeout
# close such a connection within seconds instead (OperationalError: the request's 503, a usage row spooled).
# A live server's kernel answers both at once, however long its statement runs.
TCP_OPTIONS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
               "tcp_user_timeout": 10_000}  # fmt: skip


# A database that cannot answer now: its server gone or not answering, a lock or statement timeout, no free
# connection in the pool. The request path answers these as DatabaseUnavailable (a 503), not a 500.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)


@contextmanager
def answering(action: str) -> Iterator[None]:
    """Raises DatabaseUnavailable for a database that cannot answer, with one log line saying why."""
    try:
        yield
    except UNAVAILABLE as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        # psycopg's and SQLite's messages name the host and port, never the password.
        log.warning("the database cannot %s now: %s", action, reason[0] if reason else type(exc).__name__)
        raise DatabaseUnavailable() from None


class Sessions:
    """What each part of the database (keys, usage, secrets, leases) needs: a transaction at a time."""

    _sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session


# A URL query parameter with one of these in its name holds a credential.
_SECRET_WORDS = ("password", "secret", "token")


def database_url(url: str | URL | Path) -> URL:
    """A SQLAlchemy URL; a path is a SQLite file."""
    if isinstance(url, Path):
        return URL.create("sqlite", database=str(url))
    return make_url(url)


def shown(url: str | URL | Path) -> str:
    """The URL as logs and commands show it: never its password, in its user part or in its query
    (libpq's `password`, `sslpassword`), nor a text that is not a URL at all."""
    try:
        parsed = database_url(url)
    except (ArgumentError, ValueError):
        return "(not a database URL)"
    hidden = {name: "***" for name in parsed.query if any(word in name.lower() for word in _SECRET_WORDS)}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


class DatabaseSetupError(Exception):
    """The database cannot be used at all (a wrong URL, a missing driver, a server that is not there):
    commands and `vary serve` end with this one line, never a traceback."""

    @classmethod
    def of(cls, url: str | URL | Path, exc: BaseException) -> DatabaseSetupError:
        if isinstance(exc, (ArgumentError, ValueError)):
            return cls(
                "VARY_DATABASE_URL is not a database URL: SQLAlchemy's form, e.g. sqlite:////abs/vary.db or "
                "postgresql+psycopg://user:password@host:5432/db"
            )
        where = shown(url)
        if isinstance(exc, ImportError):
            return cls(f'the driver for {where} is not installed ({exc}); for PostgreSQL: pip install "vary[cluster]"')
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return cls(f"cannot use the database {where}: {reason[0] if reason else type(exc).__name__}")


def engine_for(url: URL, *, busy_timeout_seconds: float, statement_timeout_seconds: float | None) -> Engine:
    busy_ms = max(1, int(busy_timeout_seconds * 1000))
    if url.get_backend_name() == "sqlite":
        _make_parent_dir(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds})
        event.listen(engine, "connect", lambda connection, _: _sqlite_pragmas(connection, busy_ms))
        return engine
    if url.get_backend_name() == "postgresql":
        # The lock timeout is the server's busy timeout: a row or table another transaction holds fails
        # the statement then (a usage row is spooled) instead of holding the request. The statement timeout
        # does the same for a server that has stopped answering.
        options = f"-c lock_timeout={busy_ms}"
        if statement_timeout_seconds is not None:
            options += f" -c statement_timeout={max(1, int(statement_timeout_seconds * 1000))}"
        return create_engine(
            url,
            pool_pre_ping=True,  # a connection the server (or a failover) closed is replaced, not failed
            pool_size=POOL_SIZE,
            max_overflow=POOL_MAX_OVERFLOW,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            connect_args={"connect_timeout": _connect_timeout(busy_timeout_seconds), "options": options, **TCP_OPTIONS},
        )
    return create_engine(url, pool_pre_ping=True)


def migration_engine(url: URL, *, wait_seconds: float = SETUP_WAIT_SECONDS) -> Engine:
    """An engine for one upgrade: one connection, no statement limits, and on SQLite BEGIN IMMEDIATE.

    A migration may wait for another process's migration (the lock in vary.migrations) and may rewrite a
    large table, so the request path's short timeouts do not apply; SQLite waits up to `wait_seconds`.
    """
    if url.get_backend_name() == "sqlite":
        _make_parent_dir(url)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": wait_seconds})

        def no_driver_transactions(dbapi_connection: Any, _: object) -> None:
            # pysqlite would begin its own transactions, and none before DDL: SQLAlchemy's begin below does.
            dbapi_connection.isolation_level = None

        def begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock at once: one migrator at a time

        event.listen(engine, "connect", no_driver_transactions)
        event.listen(engine, "begin", begin_immediate)
        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, **TCP_OPTIONS}
        )
    return create_engine(url, poolclass=NullPool)


def _connect_timeout(busy_timeout_seconds: float) -> int:
    return max(2, min(CONNECT_TIMEOUT_SECONDS, math.ceil(busy_timeout_seconds)))


def sqlite_file(url: URL) -> Path | None:
    """The SQLite database's file; None for another database, an in-memory one or a `file:` URI."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return None if url.database.startswith("file:") else Path(url.database)


def _make_parent_dir(url: URL) -> None:
    """A SQLite file's directory, and the file itself, made (or narrowed to) its owner's only, without opening
    them: this process may hold SQLite's locks on them already (datadir.make_private_file)."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        make_private_file(path)
        for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            narrow_private_file(companion)  # never made here: SQLite makes them, with the database's mode


def _sqlite_pragmas(dbapi_connection: object, busy_timeout_ms: int) -> None:
    """Each connection's settings. The switch to WAL is not one of them: it is the file's, made once when
    the database is opened (sqlite_setup.use_wal), as every connection switching it would race the others."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")  # waits out the other writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
