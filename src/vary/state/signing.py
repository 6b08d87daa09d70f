"""HMAC-signed, expiring image URLs, and the rotation of the secret that signs them.

The standard library's hmac is the well-kept implementation here; the URL shape
(`?expires=<unix>&signature=<hex>`) is part of vary's contract, so no token format is wrapped around it.

Rotation keeps one previous secret: URLs are signed with the current one and verified against both, so
the URLs handed out before a rotation work until they expire. `vary secret rotate` moves the current
secret to the previous one and makes a new one, in the data dir's files (`secret`, `secret.previous`) or
in the shared database; running servers read the secrets again every sweep interval. A secret given as
VARY_SIGNING_SECRET is rotated by the operator: the old one goes to VARY_SIGNING_SECRET_PREVIOUS.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vary.datadir import PRIVATE_DIR_MODE

if TYPE_CHECKING:
    from vary.settings import Settings
    from vary.state.database import Database

SECRET_BYTES = 32
# Their names in the database's `secrets` table.
DB_SECRET_NAME = "url-signing"
DB_PREVIOUS_SECRET_NAME = "url-signing-previous"
PREVIOUS_SUFFIX = ".previous"  # the data dir's `secret.previous`


class SignatureError(Exception):
    pass


class ExpiredError(Exception):
    pass


@dataclass(frozen=True)
class SigningSecrets:
    current: bytes  # signs, and verifies
    previous: bytes | None = None  # only verifies: the URLs signed before the last rotation


class UrlSigner:
    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._keys: tuple[bytes, ...] = ()
        self.use(SigningSecrets(secret, previous[0] if previous else None))

    def use(self, keys: SigningSecrets) -> None:
        """Signs with `keys.current` from now on, and verifies with both (a rotation read again)."""
        if len(keys.current) < 16 or (keys.previous is not None and len(keys.previous) < 16):
            raise ValueError("signing secret must be at least 16 bytes")
        self._keys = (keys.current,) if keys.previous is None else (keys.current, keys.previous)

    def signature(self, image_id: str, expires: int) -> str:
        return _signature(self._keys[0], image_id, expires)

    def verify(self, image_id: str, expires: int, signature: str, *, now: float) -> None:
        """Raises SignatureError or ExpiredError; the signature is checked first, in constant time."""
        given = signature.encode("utf-8", "replace")
        # Every secret is compared, whichever matches: the time taken says nothing about which one did.
        matches = [hmac.compare_digest(_signature(key, image_id, expires).encode(), given) for key in self._keys]
        if not any(matches):
            raise SignatureError
        if now >= expires:
            raise ExpiredError


def _signature(key: bytes, image_id: str, expires: int) -> str:
    return hmac.new(key, f"{image_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def secrets_for(settings: Settings, db: Database) -> SigningSecrets:
    """The current secret (secret_for) and the previous one, where there is one."""
    current = secret_for(settings, db)
    if settings.signing_secret is not None:
        previous = settings.signing_secret_previous
        return SigningSecrets(current, previous.get_secret_value().encode() if previous is not None else None)
    if settings.database_url is not None:
        return SigningSecrets(current, db.stored_secret(DB_PREVIOUS_SECRET_NAME))
    previous_path = settings.secret_path.with_name(settings.secret_path.name + PREVIOUS_SUFFIX)
    return SigningSecrets(current, previous_path.read_bytes() if previous_path.exists() else None)


def rotate_secret(settings: Settings, db: Database) -> str:
    """Makes a new current secret; the current one becomes the previous. Says where, for the command's output."""
    if settings.signing_secret is not None:
        raise ValueError(
            "the secret is VARY_SIGNING_SECRET: set VARY_SIGNING_SECRET_PREVIOUS to it and VARY_SIGNING_SECRET "
            "to a new one (`openssl rand -hex 32`) on every replica"
        )
    new = secrets.token_bytes(SECRET_BYTES)
    if settings.database_url is not None:
        db.rotate_secret(DB_SECRET_NAME, DB_PREVIOUS_SECRET_NAME, new)
        return "the database's secrets table"
    path = settings.secret_path
    current = load_or_create_secret(path)
    # The previous first: a crash between the two writes leaves both the same, and every URL still valid.
    _write_private(path.with_name(path.name + PREVIOUS_SUFFIX), current)
    _write_private(path, new)
    return str(path)


def _write_private(path: Path, data: bytes) -> None:
    """`data` in `path`, 0600, replaced atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
