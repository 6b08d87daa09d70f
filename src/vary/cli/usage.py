"""`vary usage`: requests, images, failures and latency, per key and model, from the usage rows."""

from __future__ import annotations

import argparse
import sys

from vary.ops.usage_report import parse_since, render, summarise
from vary.settings import Settings
from vary.state.database import Database


def run(args: argparse.Namespace, settings: Settings) -> None:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        sys.exit(f"vary: --since: {exc}")
    db = Database.open(settings.database)
    try:
        print(render(summarise(db.usage_rows(key_id=args.key, user=args.user, since=since)), args.format))
    finally:
        db.close()
