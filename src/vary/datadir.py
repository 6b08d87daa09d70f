"""Where vary keeps its data when nobody says: the per-user data directory, never the current directory.

`./vary-data` was the default before; a server started from one directory and `vary keys create` run
from another then used two databases. An existing `./vary-data` is still used, with a notice, so
nobody loses keys or images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

LEGACY_DIR = Path("vary-data")


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
