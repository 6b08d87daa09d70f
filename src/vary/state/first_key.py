"""The first API key: made by the one server that finds none, kept in a file only its owner can read.

Replicas (or a server and `vary serve` run twice) starting at once on one empty database would each see no
key and make one. The check and the making happen while holding the database's FIRST_KEY_LEASE (race-safe:
leases.py), so exactly one makes it. The others wait for it, polling, until a key exists or the lease is
free again (its holder released it, or crashed and it expired), then look again; after FIRST_KEY_WAIT_SECONDS
they start without one (and say so), as `vary keys create` makes one at any time.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from vary.state.connection import DatabaseSetupError
from vary.state.database import Database

log = logging.getLogger("vary")

FIRST_KEY_FILE = "first-api-key"
# Held while a replica checks for a key and makes the first one; a holder that crashed frees it after this.
FIRST_KEY_LEASE = "first-key"
FIRST_KEY_LEASE_SECONDS = 60.0
# How long a replica waits for another's first key: long enough for a crashed holder's lease to expire.
FIRST_KEY_WAIT_SECONDS = FIRST_KEY_LEASE_SECONDS + 10.0
POLL_SECONDS = 0.1


def first_key(data_dir: Path, db: Database, *, wait_seconds: float = FIRST_KEY_WAIT_SECONDS) -> str | None:
    """A key when none is active yet, kept in a 0600 file in `data_dir` until the user deletes it; None
    when a key exists, or another replica made it. Raises DatabaseSetupError when the database fails."""
    try:
        key = _make_unless_one_exists(db, wait_seconds)
    except SQLAlchemyError as exc:
        raise DatabaseSetupError.of(db.url, exc) from exc
    if key is None:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)  # with a database_url, nothing else made it yet
    path = data_dir / FIRST_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # also when the file was already there with wider permissions
        file.write(key + "\n")
    log.info("no API key existed, so one was created: it is in %s and is printed once the server is ready", path)
    return key


def _make_unless_one_exists(db: Database, wait_seconds: float) -> str | None:
    if db.count_active_keys():
        return None  # the common case, a read: no lease (a write) is taken
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{secrets.token_hex(4)}"
    deadline = time.monotonic() + wait_seconds
    while not db.try_lease(FIRST_KEY_LEASE, holder, FIRST_KEY_LEASE_SECONDS):
        # Another replica is making it: its key appears, or its lease ends and this one takes it.
        if db.count_active_keys():
            return None
        if time.monotonic() >= deadline:
            log.warning(
                "another vary has held the first-key lease for over %.0f s without making a key: starting "
                "without one (vary keys create makes one)",
                wait_seconds,
            )
            return None
        time.sleep(POLL_SECONDS)
    try:
        if db.count_active_keys():  # made by another replica before the lease was taken
            return None
        _, key = db.create_key("default")
        return key
    finally:
        db.release_lease(FIRST_KEY_LEASE, holder)


def unused_first_key(data_dir: Path, db: Database) -> str | None:
    """The first key an earlier start kept in its file, while it is still active and has made no request."""
    try:
        key = (data_dir / FIRST_KEY_FILE).read_text().strip()
    except OSError:  # deleted, as the ready block asks once the key is safe elsewhere
        return None
    info = db.authenticate(key)
    if info is None or db.usage_groups(key_id=info.id, limit=1):  # revoked, another database's, or used
        return None
    return key
