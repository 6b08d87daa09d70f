"""`vary serve` and `vary keys create|list|revoke`. Every option is also an environment variable VARY_<OPTION>."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from vary.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vary", description="OpenAI's image-variations API on open models.")
    commands = parser.add_subparsers(dest="command", required=True)

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", help="database, images and URL secret (default ./vary-data; VARY_DATA_DIR)")

    serve = commands.add_parser("serve", parents=[data_dir], help="start the API server")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1; VARY_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; VARY_PORT)")
    serve.add_argument(
        "--model", help="a built-in model (default kandinsky-2.2) or a local model directory (VARY_MODEL)"
    )
    serve.add_argument("--config", help="a TOML model catalogue; replaces --model (VARY_CONFIG)")
    serve.add_argument(
        "--no-auth", action="store_true", default=None, help="accept requests without an API key (VARY_NO_AUTH)"
    )
    serve.add_argument("--public-url", help="base of the image URLs handed out, e.g. behind a proxy (VARY_PUBLIC_URL)")
    serve.add_argument("--device", help="torch device, e.g. cuda or cpu (default: cuda when present; VARY_DEVICE)")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", parents=[data_dir], help="create a key and print it once, as the last line")
    create.add_argument("--name", default="", help="a label to recognise the key by")
    keys.add_parser("list", parents=[data_dir], help="list keys (never the keys themselves)")
    revoke = keys.add_parser("revoke", parents=[data_dir], help="revoke a key; it is refused from the next request on")
    revoke.add_argument("key_id", help="the key's id, as `vary keys list` shows it")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    options = ("host", "port", "data_dir", "config", "model", "no_auth", "public_url", "device")
    given: dict[str, Any] = {name: getattr(args, name) for name in options if getattr(args, name, None) is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        sys.exit(f"vary: invalid setting: {exc}")


def _serve(settings: Settings) -> None:
    import uvicorn

    from vary.app import build_app
    from vary.config import ConfigError, catalogue_for
    from vary.db import Database

    try:
        catalogue_for(settings.config, settings.model)  # every mistake in one line, before anything loads
    except ConfigError as exc:
        sys.exit(f"vary: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.access").addFilter(_drop_query_strings)
    if not settings.no_auth:
        db = Database(settings.db_path)
        if db.count_active_keys() == 0:
            _, key = db.create_key("default")
            print(f"No API key existed, so one was created. It is shown only this once:\n{key}", flush=True)
        db.close()
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )


def _drop_query_strings(record: logging.LogRecord) -> bool:
    """Image URLs carry their signature in the query string; access logs keep only the path."""
    if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
        record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
    return True


def _keys(args: argparse.Namespace, settings: Settings) -> None:
    from vary.db import Database

    db = Database(settings.db_path)
    try:
        if args.keys_command == "create":
            info, key = db.create_key(args.name)
            print(f"Created key {info.id}{f' ({info.name})' if info.name else ''}. It is shown only this once:")
            print(key)
        elif args.keys_command == "list":
            print(f"{'id':<10} {'created (UTC)':<20} {'status':<8} name")
            for k in db.list_keys():
                created = datetime.fromtimestamp(k.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{k.id:<10} {created:<20} {'revoked' if k.revoked_at else 'active':<8} {k.name}")
        elif args.keys_command == "revoke":
            if not db.revoke_key(args.key_id):
                sys.exit(f"vary: no key with id {args.key_id!r}")
            print(f"Revoked key {args.key_id}.")
    finally:
        db.close()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if args.command == "serve":
        _serve(settings)
    else:
        _keys(args, settings)


if __name__ == "__main__":
    main()
