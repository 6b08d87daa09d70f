"""The image store a storage URL (`VARY_STORAGE_URL`) names, parsed and checked.

- `file:///abs/dir` (the default: the data dir's `images/`): LocalImageStore.
- `s3://BUCKET[/PREFIX]`: S3ImageStore, any S3-compatible store, configured the standard AWS way.
  Replicas that share a bucket serve each other's URLs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from vary.echo import clipped
from vary.state.image_store import ImageStore, StorageSetupError
from vary.state.local_store import LocalImageStore

if TYPE_CHECKING:
    from vary.settings import Settings

# S3's own rules for bucket names (3-63 characters: lower-case letters, digits, dots and hyphens).
_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
ACCEPTED_FORMS = "file:///absolute/dir or s3://BUCKET[/PREFIX]"


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
        from vary.state.s3_store import MAX_PRESIGN_SECONDS, S3ImageStore
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
