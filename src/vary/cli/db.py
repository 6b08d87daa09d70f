"""`vary db upgrade|current`: the database's schema (Alembic's revisions in vary/state/migrations)."""

from __future__ import annotations

import argparse

from vary.settings import Settings
from vary.state import migrations
from vary.state.database import Database


def run(args: argparse.Namespace, settings: Settings) -> None:
    db = Database.open(settings.database, migrate=args.db_command == "upgrade")
    try:
        revision = db.revision()
    finally:
        db.close()
    if revision == migrations.head():
        state = "the head"
    elif revision is not None and not migrations.known(revision):
        state = f"newer than this vary's head {migrations.head()}"
    else:
        state = f"behind the head {migrations.head()}"
    print(f"{revision or 'none (not made by vary, or before vary used Alembic)'} ({state})")
