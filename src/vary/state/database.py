"""The database through SQLAlchemy: API keys (hashed), one usage row per variation request, shared secrets
and leases.

Any SQLAlchemy URL: the default is a SQLite file in the data dir; replicas share a PostgreSQL database
(`postgresql+psycopg://...`). The schema is Alembic's (vary/migrations), upgraded when the database opens.

Keys look like `vary-<key id>-<secret>`. Only a SHA-256 of the whole key is stored: the secret is
32 random bytes, so a slow password hash would add latency without adding safety. The key id
finds the row; the hashes are then compared in constant time.

The server opens the database with a short busy timeout and a usage spool (`usage_spool.py`): a usage
row that cannot be written at once is spooled, and one writer thread writes the spool to the database
when it takes writes again. Commands (`vary keys`, `vary usage`) wait longer and do not spool. On SQLite
the busy timeout is SQLite's own; on PostgreSQL it is the lock timeout, with a statement timeout behind
it, so a locked or stuck server spools usage rows instead of holding requests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

from vary.errors import DatabaseUnavailable
from vary.key_limits import LIMIT_FIELDS, KeyLimits
from vary.state import migrations
from vary.state.usage_spool import UsageSpool, Values

KEY_PREFIX = "vary-"
log = logging.getLogger("vary.usage")
# How often the writer thread tries the database again while rows are spooled.
SPOOL_RETRY_SECONDS = 1.0
# PostgreSQL: how long opening a connection may take (libpq counts whole seconds, at least 2).
CONNECT_TIMEOUT_SECONDS = 5
# PostgreSQL: connections kept per process, and how many more a burst may open. The server's threadpool
# runs the database calls (40 threads at most); a request waits this long for a free connection.
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 20
POOL_TIMEOUT_SECONDS = 10.0
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


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Per-key limits (vary.key_limits.KeyLimits): NULL takes the server's default, 0 means unlimited.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    images_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    image_quota: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class UsageRow(Base):
    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    key_id: Mapped[str | None] = mapped_column(String(16), index=True, nullable=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[str | None] = mapped_column(String(16), nullable=True)
    response_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    # Which model answered (a route's target, or the model itself) and after how many attempts.
    target: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    # A routed request's targets tried and the attempts on each ("a:2,b:1"), failed requests included.
    targets_tried: Mapped[str | None] = mapped_column(String(1000), nullable=True, default=None)
    # Images providers made (and billed) for a request that the client never got: an answer that was only
    # partly made (one of Nova's calls kept failing) ends all-or-nothing, but its paid images are counted here.
    unused_images: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class WriteProbeRow(Base):
    """One row, rewritten by each readiness probe: the database is ready when it takes a write."""

    __tablename__ = "write_probe"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    written_at: Mapped[float] = mapped_column(Float)


class SecretRow(Base):
    """A secret every replica sharing the database must agree on (the URL-signing secret)."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """A job only one replica at a time may do (sweeping the image store): who holds it, and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[float] = mapped_column(Float)


_USAGE_COLUMNS = tuple(column.name for column in UsageRow.__table__.columns if column.name != "id")


_TEXT_LENGTHS = {
    column.name: column.type.length
    for column in UsageRow.__table__.columns
    if isinstance(column.type, String) and column.type.length
}


def _storable(values: Values) -> Values:
    """Values every database takes. PostgreSQL refuses a NUL in text and text longer than its column (SQLite
    takes both): one refused row, a client's `user` say, would hold every spooled row behind it for good."""
    cleaned = dict(values)
    for name, length in _TEXT_LENGTHS.items():
        value = cleaned.get(name)
        if isinstance(value, str):
            cleaned[name] = value.replace("\x00", "\ufffd")[:length]
    return cleaned


def _values(row: UsageRow) -> Values:
    return _storable({name: getattr(row, name) for name in _USAGE_COLUMNS})


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    admin: bool = False
    limits: KeyLimits = KeyLimits()


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    limits = KeyLimits(**{name: getattr(row, name) for name in LIMIT_FIELDS})
    return KeyInfo(row.id, row.name, row.created_at, row.revoked_at, bool(row.admin), limits)


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


def newer_schema(revision: str) -> str:
    return (
        f"the database's schema is {revision}, newer than this vary knows (its head is {migrations.head()}): "
        "a newer vary migrated it; run that version (vary never downgrades a schema)"
    )


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


class Database:
    def __init__(
        self,
        url: str | URL | Path,
        *,
        busy_timeout_seconds: float = 10.0,
        statement_timeout_seconds: float | None = None,
        spool_path: Path | None = None,
        spool_max_rows: int = 100_000,
        migrate: bool = True,
    ) -> None:
        """`url`: a SQLAlchemy URL, or a SQLite file's path. `migrate`: upgrade the schema to the head first.

        `statement_timeout_seconds` (PostgreSQL): a statement running longer is cancelled; None: no limit.
        """
        try:
            self.url = database_url(url)
        except (ArgumentError, ValueError) as exc:
            raise DatabaseSetupError.of(url, exc) from exc
        try:
            self.engine: Engine = _engine(
                self.url, busy_timeout_seconds=busy_timeout_seconds, statement_timeout_seconds=statement_timeout_seconds
            )
            if migrate:
                self.upgrade()
        except (ImportError, SQLAlchemyError, OSError) as exc:
            raise DatabaseSetupError.of(url, exc) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.spool: UsageSpool | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        if spool_path is not None:
            self.spool = UsageSpool(spool_path, max_rows=spool_max_rows)
            self._writer = threading.Thread(target=self._write_spool_forever, name="vary-usage-spool", daemon=True)
            self._writer.start()

    def upgrade(self) -> None:
        """The schema at the head revision; a database already there is only read (the common case)."""
        revision = migrations.current(self.engine)
        if revision == migrations.head():
            return
        if revision is not None and not migrations.known(revision):
            # A newer vary migrated it (a rolled-back deploy): never downgrade, never run on a schema unknown.
            raise DatabaseSetupError(newer_schema(revision))
        engine = migration_engine(self.url)
        try:
            migrations.upgrade(engine)
        finally:
            engine.dispose()

    def revision(self) -> str | None:
        return migrations.current(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        if self._writer is not None:
            self._stop.set()
            self._writer.join()
            self.write_spool()  # one last try; what remains stays in the spool file for the next start
        self.engine.dispose()

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    def check_writable(self) -> None:
        """A real write, under the short busy timeout: raises when the database cannot take one now."""
        with self.session() as s:
            s.merge(WriteProbeRow(id=1, written_at=time.time()))

    # --- secrets and leases -------------------------------------------------------------------

    def shared_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret called `name`; made with `make` and kept when there is none yet.

        Race-safe: when two processes make one at once, the primary key refuses the second insert and
        both return the first one's secret.
        """
        with self.session() as s:
            row = s.get(SecretRow, name)
            if row is not None:
                return row.value
        try:
            with self.session() as s:
                s.add(SecretRow(name=name, value=make(), created_at=time.time()))
        except IntegrityError:
            pass  # another process's insert came first: read it below
        with self.session() as s:
            row = s.get(SecretRow, name)
            assert row is not None, "a secret once inserted is never deleted"
            return row.value

    def try_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Whether `holder` now holds the lease `name` for `seconds` from now: it is taken when nobody holds
        it, when it has expired, or renewed when `holder` already holds it.

        Race-safe on PostgreSQL and SQLite alike: the UPDATE's condition is checked again on the row it
        locks (PostgreSQL re-reads a row another transaction changed; SQLite has one writer at a time), and
        of two INSERTs of a new lease the primary key lets one through. Expiry uses the callers' clocks,
        which must agree to well within a lease's length (NTP does).
        """
        now = time.time()
        taken = (
            update(LeaseRow)
            .where(LeaseRow.name == name, or_(LeaseRow.expires_at <= now, LeaseRow.holder == holder))
            .values(holder=holder, expires_at=now + seconds)
        )
        with self.session() as s:
            if s.execute(taken).rowcount == 1:  # type: ignore[attr-defined]
                return True
            if s.get(LeaseRow, name) is not None:
                return False  # held by another, and not expired
        try:
            with self.session() as s:
                s.add(LeaseRow(name=name, holder=holder, expires_at=now + seconds))
        except IntegrityError:
            return False  # another holder inserted it first
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Gives the lease up if `holder` holds it, so another may take it before it expires."""
        with self.session() as s:
            s.execute(update(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder).values(expires_at=0.0))

    # --- keys -------------------------------------------------------------------------------

    def create_key(
        self, name: str = "", *, admin: bool = False, limits: KeyLimits | None = None
    ) -> tuple[KeyInfo, str]:
        """Returns the key's record and the key itself, which is never stored and never shown again."""
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        row = ApiKeyRow(
            id=key_id,
            name=name,
            key_hash=_hash(key),
            created_at=time.time(),
            admin=admin,
            **{field: getattr(limits or KeyLimits(), field) for field in LIMIT_FIELDS},
        )
        with self.session() as s:
            s.add(row)
        return _info(row), key

    def update_key(self, key_id: str, **changes: int | None) -> KeyInfo | None:
        """Sets the named limits (None: back to the server's default); None if there is no such key."""
        unknown = set(changes) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"unknown limit {sorted(unknown)[0]!r}")
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return None
            for field, value in changes.items():
                setattr(row, field, value)
            return _info(row)

    def list_keys(self) -> list[KeyInfo]:
        with self.session() as s:
            return [_info(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))]

    def count_active_keys(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))) or 0

    def revoke_key(self, key_id: str) -> bool:
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = time.time()
            return True

    def authenticate(self, key: str) -> KeyInfo | None:
        """The active key matching `key`, or None."""
        if not key.startswith(KEY_PREFIX):
            return None
        key_id = key[len(KEY_PREFIX) :].split("-", 1)[0]
        with answering("check an API key"), self.session() as s:
            row = s.get(ApiKeyRow, key_id) if key_id else None
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, _hash(key)):
                return None
            return _info(row)

    # --- usage ------------------------------------------------------------------------------

    def record_usage(self, row: UsageRow) -> None:
        """Writes the row, or spools it when the database cannot take it at once (with a spool)."""
        values = _values(row)
        if self.spool is None:
            with self.session() as s:
                s.add(UsageRow(**values))
            return
        if len(self.spool):  # the database was failing a moment ago: do not wait on it again
            self.spool.add(values)
            return
        try:
            with self.session() as s:
                s.add(UsageRow(**values))
        except SQLAlchemyError as exc:
            log.warning(
                "usage row spooled: the database cannot take it now (%s)",
                type(getattr(exc, "orig", None) or exc).__name__,
            )
            self.spool.add(values)

    def write_spool(self) -> int:
        """Writes the spooled rows to the database in one transaction; how many were written (0 on failure)."""
        if self.spool is None:
            return 0
        rows = self.spool.rows()
        if not rows:
            return 0
        try:
            with self.session() as s:
                for values in rows:
                    # A row may already be there if the spool file could not be emptied after a write.
                    present = s.scalar(
                        select(func.count())
                        .select_from(UsageRow)
                        .where(
                            UsageRow.created_at == values.get("created_at"),
                            UsageRow.request_id == values.get("request_id"),
                        )
                    )
                    if not present:
                        s.add(UsageRow(**_storable({k: v for k, v in values.items() if k in _USAGE_COLUMNS})))
        except SQLAlchemyError:
            return 0
        self.spool.written(len(rows))
        log.info("wrote %d spooled usage rows to the database", len(rows))
        return len(rows)

    def _write_spool_forever(self) -> None:
        while not self._stop.wait(SPOOL_RETRY_SECONDS):
            try:
                self.write_spool()
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one failure
                log.exception("writing spooled usage rows failed")

    def usage_rows(
        self, *, key_id: str | None = None, user: str | None = None, since: float | None = None
    ) -> list[UsageRow]:
        query = select(UsageRow).order_by(UsageRow.id)
        # Compared as stored (_storable): PostgreSQL would refuse a NUL in the parameter as well.
        if key_id is not None:
            query = query.where(UsageRow.key_id == key_id.replace("\x00", "\ufffd"))
        if user is not None:
            query = query.where(UsageRow.user == user.replace("\x00", "\ufffd"))
        if since is not None:
            query = query.where(UsageRow.created_at >= since)
        with answering("read usage"), self.session() as s:
            return list(s.scalars(query))

    def images_delivered(self, key_id: str, since: float) -> int:
        """Images a key received since `since`: what its quota counts."""
        query = select(func.coalesce(func.sum(UsageRow.n), 0)).where(
            UsageRow.key_id == key_id, UsageRow.status == 200, UsageRow.created_at >= since
        )
        with answering("count a quota"), self.session() as s:
            delivered = int(s.scalar(query) or 0)
        # Rows spooled and not yet written count too; one being written may count twice for a moment.
        return delivered + (self.spool.images(key_id, since) if self.spool is not None else 0)


def _engine(url: URL, *, busy_timeout_seconds: float, statement_timeout_seconds: float | None) -> Engine:
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


def migration_engine(url: URL) -> Engine:
    """An engine for one upgrade: one connection, no statement limits, and on SQLite BEGIN IMMEDIATE.

    A migration may wait for another process's migration (the lock in vary.migrations) and may rewrite a
    large table, so the request path's short timeouts do not apply; SQLite waits up to a minute.
    """
    if url.get_backend_name() == "sqlite":
        _make_parent_dir(url)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60.0})

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


def _make_parent_dir(url: URL) -> None:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: object, busy_timeout_ms: int) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL lets `vary keys` write while the server reads; the busy timeout waits out the other writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()
