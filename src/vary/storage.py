"""Where generated PNGs live: an ImageStore chosen by URL (`VARY_STORAGE_URL`).

- `file:///abs/dir` (the default: the data dir's `images/`): LocalImageStore, files written atomically.
- `s3://BUCKET[/PREFIX]`: S3ImageStore (vary/s3_store.py), any S3-compatible store, configured the
  standard AWS way. Replicas that share a bucket serve each other's URLs.

A local file is either absent or complete: it is written to a hidden temp name, flushed to disk and
renamed into place, so a crash mid-write never leaves a servable partial file. (An S3 object is
atomic by nature.) The calls block; callers run them in the thread pool.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from vary.echo import clipped

if TYPE_CHECKING:
    from vary.settings import Settings

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TEMP_PREFIX = ".tmp-"
# A temp file (or S3 readiness probe) this old was left by a crash: no write takes this long.
STALE_TEMP_SECONDS = 600
# S3's own rules for bucket names (3-63 characters: lower-case letters, digits, dots and hyphens).
_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
ACCEPTED_FORMS = "file:///absolute/dir or s3://BUCKET[/PREFIX]"


class StorageSetupError(Exception):
    """The store cannot be used as configured (a bad URL, a missing bucket, no access): vary does not start."""


def is_valid_id(image_id: str) -> bool:
    # Ids are ours (token_urlsafe); anything else, "../" included, never reaches a disk or a bucket.
    return _ID_PATTERN.fullmatch(image_id) is not None


def new_id() -> str:
    return secrets.token_urlsafe(24)


class ImageStore(Protocol):
    """PNGs by id. Every method blocks. The S3 store raises vary.errors.StoreUnavailable when it cannot be reached."""

    def is_valid_id(self, image_id: str) -> bool: ...

    def put(self, data: bytes) -> str:
        """Stores `data`, whole or not at all; returns its new id."""
        ...

    def read(self, image_id: str) -> bytes | None:
        """The image, or None when there is none by that id (swept, never made, or not an id of ours)."""
        ...

    def delete(self, image_id: str) -> None:
        """Raises KeyError for an id that is not ours."""
        ...

    def sweep(self, *, ttl_seconds: float, now: float | None = None) -> int:
        """Deletes images older than the URL lifetime and leftovers of crashed writes; returns how many."""
        ...

    def check_writable(self) -> None:
        """Raises unless something can be written here and removed again (readiness)."""
        ...


@runtime_checkable
class Presigner(Protocol):
    """A store that can hand out its own expiring GET URLs, so image bytes never pass through vary."""

    def presigned_url(self, image_id: str, *, expires_in: int) -> str: ...


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def is_valid_id(image_id: str) -> bool:
        return is_valid_id(image_id)

    def path_for(self, image_id: str) -> Path:
        if not self.is_valid_id(image_id):
            raise KeyError(image_id)
        return self.root / f"{image_id}.png"

    def put(self, data: bytes) -> str:
        image_id = new_id()
        final = self.path_for(image_id)
        tmp = self.root / f"{_TEMP_PREFIX}{image_id}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return image_id

    def check_writable(self) -> None:
        """Raises OSError unless a file can be created and removed here (disk full, read-only, permissions)."""
        probe = self.root / f"{_TEMP_PREFIX}ready-{secrets.token_hex(4)}"
        try:
            with open(probe, "xb") as f:
                f.write(b"ok")
        finally:
            probe.unlink(missing_ok=True)

    def read(self, image_id: str) -> bytes | None:
        if not self.is_valid_id(image_id):
            return None
        try:
            return self.path_for(image_id).read_bytes()
        except FileNotFoundError:  # never made, or swept
            return None

    def delete(self, image_id: str) -> None:
        self.path_for(image_id).unlink(missing_ok=True)

    def sweep(self, *, ttl_seconds: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.root):
            try:
                age = now - entry.stat().st_mtime
                stale_temp = entry.name.startswith(_TEMP_PREFIX) and age > STALE_TEMP_SECONDS
                expired = entry.name.endswith(".png") and age > ttl_seconds
                if stale_temp or expired:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # deleted concurrently
        return removed


@dataclass(frozen=True)
class StorageLocation:
    """A parsed storage URL: a local directory, or a bucket and a key prefix ("" or ending in "/")."""

    scheme: Literal["file", "s3"]
    directory: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_storage_url(url: str | None, default_dir: Path) -> StorageLocation:
    """`url` checked and split; None or "" is `default_dir`. Raises StorageSetupError naming the accepted forms."""
    if not url:
        return StorageLocation("file", directory=default_dir)
    # Never echo what may carry credentials (user:password@host).
    shown = "the storage URL" if "@" in url else f"the storage URL {clipped(url)!r}"
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise StorageSetupError(f"{shown} has a query or fragment; accepted forms: {ACCEPTED_FORMS}")
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StorageSetupError(f"{shown} is not an absolute file:// path; accepted forms: {ACCEPTED_FORMS}")
        return StorageLocation("file", directory=Path(path))
    if parts.scheme == "s3":
        if not _BUCKET_PATTERN.fullmatch(parts.netloc):
            raise StorageSetupError(f"{shown} does not name a valid S3 bucket; accepted forms: {ACCEPTED_FORMS}")
        prefix = unquote(parts.path).strip("/")
        return StorageLocation("s3", bucket=parts.netloc, prefix=f"{prefix}/" if prefix else "")
    raise StorageSetupError(f"{shown} is not accepted; accepted forms: {ACCEPTED_FORMS}")


def open_store(settings: Settings) -> ImageStore:
    """The store the settings name, checked: an S3 bucket must exist and answer (it is never created here).

    Raises StorageSetupError with a one-line reason. Blocks (the S3 check is a network call).
    """
    location = parse_storage_url(settings.storage_url, settings.images_dir)
    if settings.storage_presign and location.scheme != "s3":
        raise StorageSetupError(
            "VARY_STORAGE_PRESIGN=1 needs an s3:// storage URL (--storage-url / VARY_STORAGE_URL): "
            "a local directory has no presigned URLs"
        )
    if location.scheme == "file":
        assert location.directory is not None
        return LocalImageStore(location.directory)
    try:
        from vary.s3_store import MAX_PRESIGN_SECONDS, S3ImageStore
    except ImportError as exc:
        raise StorageSetupError(f"an s3:// store needs boto3: pip install 'vary[cluster]' ({exc})") from None
    if settings.storage_presign and settings.url_ttl_seconds > MAX_PRESIGN_SECONDS:
        raise StorageSetupError(
            f"presigned URLs last at most {MAX_PRESIGN_SECONDS} seconds (7 days); "
            f"VARY_URL_TTL_SECONDS is {settings.url_ttl_seconds}"
        )
    store = S3ImageStore(location.bucket, location.prefix)
    store.check_bucket()
    return store
