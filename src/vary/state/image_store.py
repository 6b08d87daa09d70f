"""Where generated PNGs live: the ImageStore protocol, and the ids every store shares.

Two stores implement it: LocalImageStore (vary/state/local_store.py, a directory) and S3ImageStore
(vary/state/s3_store.py, a bucket); vary/state/stores.py opens the one `VARY_STORAGE_URL` names.
Every call blocks; callers run them in the thread pool.
"""

from __future__ import annotations

import re
import secrets
from typing import Protocol, runtime_checkable

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
STALE_TEMP_PREFIX = ".tmp-"  # a write in progress, or left by a crash
# A temp file (or S3 readiness probe) this old was left by a crash: no write takes this long.
STALE_TEMP_SECONDS = 600


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
