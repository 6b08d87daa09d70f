"""HMAC-signed, expiring image URLs.

The standard library's hmac is the well-kept implementation here; the URL shape
(`?expires=<unix>&signature=<hex>`) is part of vary's contract, so no token format is wrapped around it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from vary.datadir import PRIVATE_DIR_MODE

if TYPE_CHECKING:
    from vary.settings import Settings
    from vary.state.database import Database

SECRET_BYTES = 32
# Its name in the database's `secrets` table.
DB_SECRET_NAME = "url-signing"


class SignatureError(Exception):
    pass


class ExpiredError(Exception):
    pass


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("signing secret must be at least 16 bytes")
        self._secret = secret

    def signature(self, image_id: str, expires: int) -> str:
        message = f"{image_id}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, image_id: str, expires: int, signature: str, *, now: float) -> None:
        """Raises SignatureError or ExpiredError; the signature is checked first, in constant time."""
        expected = self.signature(image_id, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise SignatureError
        if now >= expires:
            raise ExpiredError


def secret_for(settings: Settings, db: Database) -> bytes:
    """The URL-signing secret, the same on every replica that shares the settings' database.

    VARY_SIGNING_SECRET when set; else, with a database_url, the one kept in that database (made by the
    first replica to start); else, with the SQLite default, the data dir's file, as before.
    """
    if settings.signing_secret is not None:
        return settings.signing_secret.get_secret_value().encode()
    if settings.database_url is not None:
        return db.shared_secret(DB_SECRET_NAME, lambda: secrets.token_bytes(SECRET_BYTES))
    return load_or_create_secret(settings.secret_path)


def load_or_create_secret(path: Path) -> bytes:
    """The secret lives in the data dir so URLs survive restarts; created once, readable by owner only."""
    if path.exists():
        secret = path.read_bytes()
        if len(secret) < 16:
            raise ValueError(f"signing secret {path} is shorter than 16 bytes; remove it to make a new one")
        return secret
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(SECRET_BYTES))
        f.flush()
        os.fsync(f.fileno())
    try:
        # link() never overwrites: when two processes race, both end up reading the winner's secret.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()
