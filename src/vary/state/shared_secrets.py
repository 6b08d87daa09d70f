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
