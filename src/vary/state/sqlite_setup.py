"""A SQLite file opened by several processes and threads at once: its one-time setup, and SQLite's "try again".

Opening the file sets it up: the switch to WAL (a change to the file's header, which the file keeps) and
the migration. Openers that start together race for it, and SQLite answers some of these races with an
error instead of waiting (sqlite.org/rescode.html):
- SQLITE_BUSY at once, without calling the busy handler, where waiting could deadlock: two connections
  switching the journal mode together each hold a read lock and need the write lock, so one must give up
  and try again (sqlite.org/c3ref/busy_handler.html);
- SQLITE_PROTOCOL where a connection lost WAL's locking race many times over a few seconds, which SQLite
  documents as rare, under many processes competing hard.
Both mean "try again": each step of the setup is retried, with jittered backoff, until one deadline; the
step that then still fails ends the start in one line. The migration itself runs once: under BEGIN
IMMEDIATE, the others wait for its write lock, then find the head (vary.state.migrations).

No lock file orders vary's openers first. One was tried: it orders only vary's own openers, not an older
vary or the sqlite3 shell, so the retries are needed anyway; with them the stress test
(tests/unit/test_concurrent_open.py) passed as well without it, and faster, while the lock file would stay
in the data dir and, on a filesystem without flock, a crashed start could leave it held.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Engine
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from vary.state.connection import shown

log = logging.getLogger("vary")
T = TypeVar("T")

# SQLite's primary result codes (sqlite.org/rescode.html), also the low byte of their extended codes.
SQLITE_BUSY = 5
SQLITE_PROTOCOL = 15
_CONTENDED_MESSAGES = ("database is locked", "locking protocol")  # their messages, where Python has no code


def contended(exc: BaseException) -> bool:
    """Whether `exc` is SQLite saying that another connection holds a lock it needed: worth a retry."""
    error = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and later
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_PROTOCOL)
    return str(error) in _CONTENDED_MESSAGES


def retried(step: Callable[[], T], deadline: float) -> T:
    """`step`'s result, tried again while SQLite says it is contended, until `deadline` (time.monotonic)."""
    retrying = Retrying(
        retry=retry_if_exception(contended),
        stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
        wait=wait_random_exponential(multiplier=0.02, max=1.0),  # jitter: two that collided do not again
        before_sleep=lambda state: log.debug("the database is busy (%s); trying again", state.outcome),
        reraise=True,
    )
    return retrying(step)


def use_wal(engine: Engine) -> None:
    """The file in WAL mode, which it keeps: `vary keys` then writes while the server reads.

    `engine` is the setup's (connection.migration_engine): its connections begin no transaction of their
    own, and the journal mode cannot change inside one.
    """
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        cursor.close()
    finally:
        connection.close()
    if str(mode).lower() != "wal":  # SQLite answers with the mode it kept where WAL is not supported
        log.warning("the database %s stays in journal mode %s: writers block readers", shown(engine.url), mode)
