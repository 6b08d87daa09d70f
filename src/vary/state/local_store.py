"""LocalImageStore: generated PNGs as files in one directory (the default: the data dir's `images/`).

A file is either absent or complete: it is written to a hidden temp name, flushed to disk and
renamed into place, so a crash mid-write never leaves a servable partial file.

A disk that cannot take or give a file (full, read-only, the directory gone or replaced, an I/O
error) is vary.errors.StoreUnavailable, as an S3 store that cannot be reached is: the client gets a
503 with Retry-After and can ask for b64_json. Nothing about a failure is remembered: every call
tries the disk again, so the store works again the moment the disk does (a directory that was
removed is made again).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from vary.datadir import PRIVATE_DIR_MODE, private_opener
from vary.errors import StoreUnavailable
from vary.state.image_store import STALE_TEMP_PREFIX, STALE_TEMP_SECONDS, is_valid_id, new_id

log = logging.getLogger("vary.storage")


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)

    @staticmethod
    def is_valid_id(image_id: str) -> bool:
        return is_valid_id(image_id)

    def path_for(self, image_id: str) -> Path:
        if not self.is_valid_id(image_id):
            raise KeyError(image_id)
        return self.root / f"{image_id}.png"

    def put(self, data: bytes) -> str:
        try:
            return self._put(data)
        except FileNotFoundError:
            # The directory itself was removed (a cleanup, a volume remounted): made again, tried once more.
            try:
                self.root.mkdir(exist_ok=True)
                return self._put(data)
            except OSError as exc:
                raise self._unavailable("write", exc) from None
        except OSError as exc:
            raise self._unavailable("write", exc) from None

    def _put(self, data: bytes) -> str:
        image_id = new_id()
        final = self.path_for(image_id)
        tmp = self.root / f"{STALE_TEMP_PREFIX}{image_id}"
        try:
            with open(tmp, "xb", opener=private_opener) as f:  # served only behind signed URLs
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only or vanished directory: nothing was left there either
            raise
        return image_id

    def check_writable(self) -> None:
        """Raises StoreUnavailable unless a file can be created and removed here (disk full, read-only, gone)."""
        probe = self.root / f"{STALE_TEMP_PREFIX}ready-{secrets.token_hex(4)}"
        try:
            try:
                with open(probe, "xb") as f:
                    f.write(b"ok")
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise self._unavailable("readiness probe", exc) from None

    def read(self, image_id: str) -> bytes | None:
        if not self.is_valid_id(image_id):
            return None
        try:
            return self.path_for(image_id).read_bytes()
        except FileNotFoundError:  # never made, or swept
            return None
        except OSError as exc:
            raise self._unavailable("read", exc) from None

    def delete(self, image_id: str) -> None:
        self.path_for(image_id).unlink(missing_ok=True)

    def sweep(self, *, ttl_seconds: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.root):
            try:
                age = now - entry.stat().st_mtime
                stale_temp = entry.name.startswith(STALE_TEMP_PREFIX) and age > STALE_TEMP_SECONDS
                expired = entry.name.endswith(".png") and age > ttl_seconds
                if stale_temp or expired:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # deleted concurrently
        return removed

    def _unavailable(self, action: str, exc: OSError) -> StoreUnavailable:
        # The reason (ENOSPC, EROFS, ...) is for the operator; the client is told to retry.
        log.warning("image store %s: %s failed: %s", self.root, action, exc)
        return StoreUnavailable(retry_after=5)
