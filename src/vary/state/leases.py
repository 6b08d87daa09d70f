"""Leases: a job only one replica at a time may do (sweeping the image store), held until a time."""

from __future__ import annotations

import time

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from vary.state.connection import Sessions
from vary.state.schema import LeaseRow


class Leases(Sessions):
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
