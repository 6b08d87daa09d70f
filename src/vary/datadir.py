"""Where vary keeps its data when nobody says: the per-user data directory, never the current directory.

`./vary-data` was the default before; a server started from one directory and `vary keys create` run
from another then used two databases. An existing `./vary-data` is still used, with a notice, so
nobody loses keys or images.

Everything vary keeps there is its owner's only: the directory is 0700 and every file vary writes is
0600 (the database holds key hashes and end users, the images are served only behind signed URLs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

LEGACY_DIR = Path("vary-data")
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True)
class DataDir:
    path: Path
    why: str  # how it was chosen, for the one line every command prints

    def line(self) -> str:
        return f"data dir {self.path} ({self.why})"


def default_data_dir() -> Path:
    return platformdirs.user_data_path("vary")


def choose_data_dir(given: str | Path | None) -> DataDir:
    """--data-dir, else VARY_DATA_DIR, else ./vary-data if it exists, else the per-user data directory."""
    if given is not None:
        return DataDir(Path(given), "--data-dir")
    if os.environ.get("VARY_DATA_DIR"):
        return DataDir(Path(os.environ["VARY_DATA_DIR"]), "VARY_DATA_DIR")
    if (LEGACY_DIR / "vary.db").is_file():
        return DataDir(
            LEGACY_DIR.resolve(),
            f"found in the current directory; the default is now {default_data_dir()}: "
            "move it there or pass --data-dir",
        )
    return DataDir(default_data_dir(), "the per-user default; --data-dir or VARY_DATA_DIR to change it")


def make_private_dir(path: Path) -> None:
    """`path` as a directory only its owner can enter: made so, or narrowed to that (an older vary made it 0755)."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR_MODE)


def make_private_file(path: Path) -> None:
    """`path` as a file only its owner can read: made empty if missing, or narrowed.

    SQLite gives a database's WAL and shared-memory files the database file's own mode.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
    if path.stat().st_mode & 0o077:
        os.chmod(path, PRIVATE_FILE_MODE)


def private_opener(path: str, flags: int) -> int:
    """For open(..., opener=private_opener): a file it creates is 0600 whatever the umask allows."""
    return os.open(path, flags, PRIVATE_FILE_MODE)
