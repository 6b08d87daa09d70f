"""`vary serve`, `vary keys create|update|list|revoke`, `vary usage`, `vary db upgrade|current`, and the client
`vary create`.

Every option of `vary serve` is also an environment variable VARY_<OPTION>.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vary.cli import create as create_command
from vary.datadir import DataDir, choose_data_dir
from vary.key_limits import LIMIT_FIELDS, LIMIT_FLAGS, KeyLimits
from vary.ops.usage_report import FORMATS
from vary.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vary", description="OpenAI's image-variations API on open models.")
    parser.add_argument("--version", action="version", version=f"vary {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        help="database, images and URL secret (default: the per-user data dir, ~/.local/share/vary on Linux; "
        "VARY_DATA_DIR)",
    )

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        help="keys and usage in this SQLAlchemy database, e.g. postgresql+psycopg://vary@db-host/vary to share "
        "one between replicas (default: vary.db in the data dir; VARY_DATABASE_URL)",
    )
    data_dir = argparse.ArgumentParser(add_help=False, parents=[data_dir, database])

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
    serve.add_argument(
        "--storage-url",
        help="where images are stored: file:///abs/dir or s3://BUCKET[/PREFIX] (default: the data dir's images/; "
        "VARY_STORAGE_URL)",
    )
    serve.add_argument(
        "--ray",
        dest="ray_address",
        metavar="ADDRESS",
        help="run as a Ray Serve application on the Ray cluster at ADDRESS, e.g. 10.0.0.5:6379 (VARY_RAY_ADDRESS)",
    )

    serve.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        help="log lines (default auto: text on a terminal, json otherwise; VARY_LOG_FORMAT)",
    )
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning"), help="debug adds tracebacks (default info; VARY_LOG_LEVEL)"
    )

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser(
        "create", parents=[data_dir, _limit_options(None)], help="create a key and print it once, as the last line"
    )
    create.add_argument("--name", default="", help="a label to recognise the key by")
    create.add_argument("--admin", action="store_true", help="the key may also use the admin API (/v1/admin/...)")
    update = keys.add_parser(
        "update", parents=[data_dir, _limit_options(argparse.SUPPRESS)], help="change a key's limits"
    )
    update.add_argument("key_id", help="the key's id, as `vary keys list` shows it")
    keys.add_parser("list", parents=[data_dir], help="list keys and their limits (never the keys themselves)")
    revoke = keys.add_parser("revoke", parents=[data_dir], help="revoke a key; it is refused from the next request on")
    revoke.add_argument("key_id", help="the key's id, as `vary keys list` shows it")

    pull = commands.add_parser(
        "pull", help="download the files a model loads, and no more, into the Hugging Face cache"
    )
    pull.add_argument("models", nargs="*", metavar="MODEL", help="built-in models (default: kandinsky-2.2)")
    pull.add_argument("--config", help="every local model of this TOML catalogue")
    pull.add_argument("--local-dir", help="a directory instead of the HF cache: one folder per repository in it")
    pull.add_argument(
        "--device", help="the device the models will run on: GPUs get fp16 files where served (VARY_DEVICE)"
    )

    create_command.add_parser(commands)

    usage = commands.add_parser("usage", parents=[data_dir], help="requests, images, failures and latency")
    usage.add_argument("--key", help="only this key id")
    usage.add_argument("--user", help="only this end user (the requests' `user` field)")
    usage.add_argument("--since", help="only from this date or date-time on (ISO 8601; UTC unless it says)")
    usage.add_argument("--format", choices=FORMATS, default="table", help="table (default), csv or json")

    db = commands.add_parser("db", help="the database's schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", parents=[data_dir], help="migrate the schema to this vary's version (also done at start)")
    db.add_parser("current", parents=[data_dir], help="print the schema's revision, without changing anything")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vary")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _limit_options(default: object) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    for flag, (dest, what) in LIMIT_FLAGS.items():
        options.add_argument(
            flag, dest=dest, type=_limit, default=default, metavar="N", help=f"{what}; 0: unlimited, default: server's"
        )
    return options


def _limit(text: str) -> int | None:
    """A limit on the command line: a count, 0 for unlimited, or `default` for the server's default."""
    if text == "default":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'default'")
    return int(text)


def _settings(args: argparse.Namespace) -> tuple[Settings, DataDir]:
    options: tuple[str, ...] = ("host", "port", "config", "model", "no_auth", "public_url", "device", "log_format")
    options += ("log_level", "database_url", "storage_url", "ray_address")
    given: dict[str, Any] = {name: getattr(args, name) for name in options if getattr(args, name, None) is not None}
    data_dir = choose_data_dir(getattr(args, "data_dir", None))
    try:
        return Settings(**given, data_dir=data_dir.path), data_dir
    except ValidationError as exc:
        sys.exit(f"vary: invalid setting: {_invalid(exc)}")


def _invalid(exc: ValidationError) -> str:
    """pydantic's errors, one a line, with the value given except for a secret's."""
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        given = "" if field == "signing_secret" else f" (given: {error.get('input')!r})"
        lines.append(f"{field}: {error['msg']}{given}")
    return "\n".join(lines)


def _keys(args: argparse.Namespace, settings: Settings) -> None:
    from vary.state.database import Database, KeyInfo

    def limits_text(info: KeyInfo) -> str:
        shown = [f"{flag[2:]}={_shown(getattr(info.limits, dest))}" for flag, (dest, _) in LIMIT_FLAGS.items()]
        return " ".join(shown)

    db = Database(settings.database)
    try:
        if args.keys_command == "create":
            limits = KeyLimits(**{field: getattr(args, field) for field in LIMIT_FIELDS})
            info, key = db.create_key(args.name, admin=args.admin, limits=limits)
            kind = "admin key" if info.admin else "key"
            print(f"Created {kind} {info.id}{f' ({info.name})' if info.name else ''}. It is shown only this once:")
            print(key)
        elif args.keys_command == "update":
            changes = {field: getattr(args, field) for field in LIMIT_FIELDS if hasattr(args, field)}
            if not changes:
                sys.exit("vary: nothing to update: give --rpm, --ipm, --concurrency or --quota")
            updated = db.update_key(args.key_id, **changes)
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


def _shown(limit: int | None) -> str:
    return "default" if limit is None else ("unlimited" if limit == 0 else str(limit))


def _usage(args: argparse.Namespace, settings: Settings) -> None:
    from vary.ops.usage_report import parse_since, render, summarise
    from vary.state.database import Database

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        sys.exit(f"vary: --since: {exc}")
    db = Database(settings.database)
    try:
        print(render(summarise(db.usage_rows(key_id=args.key, user=args.user, since=since)), args.format))
    finally:
        db.close()


def _db(args: argparse.Namespace, settings: Settings) -> None:
    from vary.state import migrations
    from vary.state.database import Database

    db = Database(settings.database, migrate=args.db_command == "upgrade")
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


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "create":  # a client: the server's settings do not apply
        sys.exit(create_command.run(args))
    settings, data_dir = _settings(args)
    if args.command == "pull":
        from vary.cli import pull

        sys.exit(
            pull.run(
                args.models,
                Path(args.config) if args.config else None,
                Path(args.local_dir) if args.local_dir else None,
                settings,
            )
        )
    if args.command == "serve":
        from vary.cli.serve import serve

        serve(settings, data_dir)
        return
    print(f"vary: {data_dir.line()}", file=sys.stderr)  # stdout stays the command's own output
    if settings.database_url is not None:
        from vary.state.database import shown

        print(f"vary: database {shown(settings.database_url)}", file=sys.stderr)
    from vary.state.database import DatabaseSetupError

    if settings.database_url is None and not settings.db_path.is_file():
        if (args.command, getattr(args, "keys_command", None) or getattr(args, "db_command", None)) in (
            ("keys", "create"),
            ("db", "upgrade"),
        ):
            print(
                f"vary: no database in {data_dir.path} yet: making one (a server started with it uses it)",
                file=sys.stderr,
            )
        else:  # only reading (or changing what is not there): nothing to make, and an empty table would mislead
            sys.exit(
                f"vary: no database in {data_dir.path}: no server has run with this data dir and no key was made "
                "there. `vary serve` prints its data dir and the command that reaches its keys; pass that "
                "--data-dir (or VARY_DATA_DIR, or --database-url)."
            )
    try:
        if args.command == "usage":
            _usage(args, settings)
        elif args.command == "db":
            _db(args, settings)
        else:
            _keys(args, settings)
    except DatabaseSetupError as exc:
        sys.exit(f"vary: {exc}")


if __name__ == "__main__":
    main()
