"""Where vary keeps its data when nobody says: the per-user data directory, never the current directory.

`./vary-data` was the default before; a server started from one directory and `vary keys create` run
from another then used two databases. An existing `./vary-data` is still used, with a notice, so
nobody loses keys or images.

Everything vary keeps there is its owner's only: the directory is 0700 and every file vary writes is
0600 (the database holds key hashes and end users, the images are served only behind signed URLs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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
    """`path` as a file only its owner can read: made empty if missing, or narrowed. Never opened.

    SQLite gives a database's WAL and shared-memory files the database file's own mode. The file is not
    opened because closing any descriptor of a file drops every POSIX lock this process holds on it,
    SQLite's own included (sqlite.org/howtocorrupt.html, 2.2): another connection of this process then
    believes it holds locks it has lost. A private file is made under a temporary name and linked into
    place, which makes it only where nothing is there yet, whoever races it.
    """
    if not path.exists():
        fd, made = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp's mode is 0600
        os.close(fd)
        try:
            os.link(made, path)
        except FileExistsError:
            pass  # made meanwhile by another process or thread: narrowed below like any other
        except OSError:  # a filesystem without hard links: made in place, new, so no lock of ours is on it yet
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        finally:
            os.unlink(made)
    narrow_private_file(path)


def narrow_private_file(path: Path) -> None:
    """`path`, if it exists, made readable by its owner only (an older vary made some with the umask's mode)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            os.chmod(path, PRIVATE_FILE_MODE)


def private_opener(path: str, flags: int) -> int:
    """For open(..., opener=private_opener): a file it creates is 0600 whatever the umask allows."""
    return os.open(path, flags, PRIVATE_FILE_MODE)
