"""`vary secret rotate`: a new URL-signing secret; the one it replaces verifies the URLs it signed until they expire."""

from __future__ import annotations

import argparse
import sys

from vary.settings import Settings
from vary.state.database import Database
from vary.state.signing import rotate_secret


def run(args: argparse.Namespace, settings: Settings) -> None:
    db = Database.open(settings.database)
    try:
        where = rotate_secret(settings, db)
    except ValueError as exc:
        sys.exit(f"vary: {exc}")
    finally:
        db.close()
    print(
        f"Rotated the URL-signing secret in {where}. Running servers sign with the new one within "
        f"{settings.sweep_interval_seconds:g} seconds; URLs signed before stay valid until they expire "
        "(rotate again only after that: one previous secret is kept)."
    )
