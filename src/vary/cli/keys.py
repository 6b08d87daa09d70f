"""`vary keys create|update|list|revoke`: API keys and their limits, in the server's database."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from vary.key_limits import LIMIT_FIELDS, LIMITS, KeyLimits
from vary.settings import Settings
from vary.state.database import Database
from vary.state.keys import KeyInfo


def run(args: argparse.Namespace, settings: Settings) -> None:
    def limits_text(info: KeyInfo) -> str:
        shown = [f"{limit.flag[2:]}={_shown(getattr(info.limits, limit.field))}" for limit in LIMITS]
        return " ".join(shown + (["safety=off"] if info.safety else []))

    db = Database.open(settings.database)
    try:
        if args.keys_command == "create":
            limits = KeyLimits(**{field: getattr(args, field) for field in LIMIT_FIELDS})
            info, key = db.create_key(args.name, admin=args.admin, limits=limits, safety=_key_safety(args.safety))
            kind = "admin key" if info.admin else "key"
            print(f"Created {kind} {info.id}{f' ({info.name})' if info.name else ''}. It is shown only this once:")
            print(key)
        elif args.keys_command == "update":
            changes = {field: getattr(args, field) for field in LIMIT_FIELDS if hasattr(args, field)}
            if not changes and not hasattr(args, "safety"):
                flags = ", ".join(limit.flag for limit in LIMITS)
                sys.exit(f"vary: nothing to update: give {flags} or --safety")
            updated = db.update_key(args.key_id, **changes)
            if updated is not None and hasattr(args, "safety"):
                updated = db.set_key_safety(args.key_id, _key_safety(args.safety))
            if updated is None:
                sys.exit(f"vary: no key with id {args.key_id!r}")
            print(f"Updated key {updated.id}: {limits_text(updated)}")
        elif args.keys_command == "list":
            print(f"{'id':<10} {'created (UTC)':<20} {'status':<8} {'role':<6} {'limits':<44} name")
            for k in db.list_keys():
                created = datetime.fromtimestamp(k.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                status = "revoked" if k.revoked_at else "active"
                role = "admin" if k.admin else "user"
                print(f"{k.id:<10} {created:<20} {status:<8} {role:<6} {limits_text(k):<44} {k.name}")
        elif args.keys_command == "revoke":
            if not db.revoke_key(args.key_id):
                sys.exit(f"vary: no key with id {args.key_id!r}")
            print(f"Revoked key {args.key_id}.")
    finally:
        db.close()


def _key_safety(choice: str | None) -> str | None:
    """`--safety default` (or none given) is NULL: the models' policies apply."""
    return None if choice in (None, "default") else choice


def _shown(limit: int | None) -> str:
    return "default" if limit is None else ("unlimited" if limit == 0 else str(limit))
