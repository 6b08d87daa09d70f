"""Secrets every replica sharing the database must agree on (the URL-signing secret), made once."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from vary.state.connection import Sessions
from vary.state.schema import SecretRow


class SharedSecrets(Sessions):
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

    def stored_secret(self, name: str) -> bytes | None:
        with self.session() as s:
            row = s.get(SecretRow, name)
            return None if row is None else row.value

    def rotate_secret(self, name: str, previous_name: str, new: bytes) -> None:
        """In one transaction: `name`'s value becomes `previous_name`'s, and `new` becomes `name`'s."""
        now = time.time()
        with self.session() as s:
            current = s.get(SecretRow, name)
            if current is not None:
                s.merge(SecretRow(name=previous_name, value=current.value, created_at=now))
                current.value, current.created_at = new, now
            else:
                s.add(SecretRow(name=name, value=new, created_at=now))
