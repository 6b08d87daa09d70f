"""API keys: made, listed, limited, revoked, and checked on every request.

Keys look like `vary-<key id>-<secret>`. Only a SHA-256 of the whole key is stored: the secret is
32 random bytes, so a slow password hash would add latency without adding safety. The key id
finds the row; the hashes are then compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from vary.key_limits import LIMIT_FIELDS, KeyLimits
from vary.state.connection import Sessions, answering
from vary.state.schema import ApiKeyRow

KEY_PREFIX = "vary-"
# A key's `safety`: its requests skip the content checks. NULL (None) follows the model's policy.
KEY_SAFETY_OFF = "off"
KEY_SAFETY_VALUES = (KEY_SAFETY_OFF, None)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    admin: bool = False
    limits: KeyLimits = KeyLimits()
    safety: str | None = None  # KEY_SAFETY_OFF: the content checks are skipped for this key

    @property
    def checks_content(self) -> bool:
        return self.safety != KEY_SAFETY_OFF


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    limits = KeyLimits(**{name: getattr(row, name) for name in LIMIT_FIELDS})
    return KeyInfo(row.id, row.name, row.created_at, row.revoked_at, bool(row.admin), limits, row.safety)


def _key_safety(safety: str | None) -> str | None:
    if safety not in KEY_SAFETY_VALUES:
        raise ValueError(f"a key's safety is \"{KEY_SAFETY_OFF}\" or None (the model's policy), not {safety!r}")
    return safety


class Keys(Sessions):
    def create_key(
        self, name: str = "", *, admin: bool = False, limits: KeyLimits | None = None, safety: str | None = None
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
            safety=_key_safety(safety),
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

    def set_key_safety(self, key_id: str, safety: str | None) -> KeyInfo | None:
        """ "off": the key's requests skip the content checks; None: the models' policies apply again."""
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return None
            row.safety = _key_safety(safety)
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
