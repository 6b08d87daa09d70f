from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from vary.state.database import Database


def test_keys_are_hashed_at_rest_and_revocable(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "vary.db")
    info, key = db.create_key("ci")
    assert key.startswith(f"vary-{info.id}-")
    assert db.authenticate(key) == info
    for wrong in (key + "x", key[:-1], "vary-", f"vary-{info.id}", "sk-123", ""):
        assert db.authenticate(wrong) is None
    raw = (tmp_path / "vary.db").read_bytes() + (tmp_path / "vary.db-wal").read_bytes()
    assert key.encode() not in raw and key.split("-", 2)[2].encode() not in raw
    assert db.count_active_keys() == 1
    assert db.revoke_key(info.id) and not db.revoke_key("nope")
    assert db.authenticate(key) is None and db.count_active_keys() == 0
    assert db.list_keys()[0].revoked_at is not None
    db.close()
    with sqlite3.connect(tmp_path / "vary.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_opening_a_database_starts_no_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    db = Database.open(tmp_path / "vary.db", spool_path=tmp_path / "spool")
    try:
        assert set(threading.enumerate()) == before
        db.start_spool_writer()
        assert {thread.name for thread in set(threading.enumerate()) - before} == {"vary-usage-spool"}
    finally:
        db.close()
    assert set(threading.enumerate()) == before
