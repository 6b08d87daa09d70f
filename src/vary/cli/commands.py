"""`vary serve`, `vary keys create|update|list|revoke`, `vary usage`, `vary db upgrade|current`, and the client
`vary create`.

Every option of `vary serve` is also an environment variable VARY_<OPTION>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.exc import SQLAlchemyError

from vary.cli import create as create_command
from vary.cli import db as db_command
from vary.cli import eval as eval_command
from vary.cli import keys as keys_command
from vary.cli import secret as secret_command
from vary.cli import usage as usage_command
from vary.cli.address import address_problem
from vary.cli.flags import ENVIRONMENT_NOTE, OneLineHelp, add_settings_flags, given_settings
from vary.datadir import DataDir, choose_data_dir
from vary.echo import clipped
from vary.errors import DatabaseUnavailable
from vary.key_limits import LIMITS
from vary.ops.logs import configure_logging
from vary.ops.usage_report import FORMATS
from vary.settings import Settings
from vary.state.connection import DatabaseSetupError, shown

# The settings every command that opens the database takes; `vary serve` takes them all.
STATE_SETTINGS = ("data_dir", "database_url")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vary", description="OpenAI's image-variations API on open models.")
    parser.add_argument("--version", action="version", version=f"vary {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    # Where keys and usage live, for every command that reads them.
    data_dir = argparse.ArgumentParser(add_help=False)
    add_settings_flags(data_dir, STATE_SETTINGS)

    serve = commands.add_parser(
        "serve",
        help="start the API server",
        usage="vary serve [OPTIONS]",
        formatter_class=OneLineHelp,
        epilog=ENVIRONMENT_NOTE,
    )
    add_settings_flags(serve, sections=True)

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
    for command, default in ((create, None), (update, argparse.SUPPRESS)):
        command.add_argument(
            "--safety",
            choices=("off", "default"),
            default=default,
            help="off: this key's requests skip the content checks (a trusted key); default: the models' policies",
        )
    keys.add_parser("list", parents=[data_dir], help="list keys and their limits (never the keys themselves)")
    revoke = keys.add_parser("revoke", parents=[data_dir], help="revoke a key; it is refused from the next request on")
    revoke.add_argument("key_id", help="the key's id, as `vary keys list` shows it")

    pull = commands.add_parser(
        "pull", help="download the files a model loads, and no more, into the Hugging Face cache"
    )
    pull.add_argument("models", nargs="*", metavar="MODEL", help="built-in models (default: kandinsky-2.2)")
    pull.add_argument("--local-dir", help="a directory instead of the HF cache: one folder per repository in it")
    # Every local model of the catalogue; the device decides the files (GPUs get fp16 ones where served).
    add_settings_flags(pull, ["catalogue", "config", "device", "accept_license"])

    create_command.add_parser(commands)
    eval_command.add_parser(commands)

    usage = commands.add_parser("usage", parents=[data_dir], help="requests, images, failures and latency")
    usage.add_argument("--key", help="only this key id")
    usage.add_argument("--user", help="only this end user (the requests' `user` field)")
    usage.add_argument("--since", help="only from this date or date-time on (ISO 8601; UTC unless it says)")
    usage.add_argument("--format", choices=FORMATS, default="table", help="table (default), csv or json")

    secret = commands.add_parser("secret", help="the URL-signing secret").add_subparsers(
        dest="secret_command", required=True
    )
    secret.add_parser("rotate", parents=[data_dir], help="a new signing secret; URLs signed before stay valid")

    db = commands.add_parser("db", help="the database's schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", parents=[data_dir], help="migrate the schema to this vary's version (also done at start)")
    db.add_parser("current", parents=[data_dir], help="print the schema's revision, without changing anything")
    return parser


def _limit_options(default: object) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    for limit in LIMITS:
        options.add_argument(
            limit.flag,
            dest=limit.field,
            type=_limit,
            default=default,
            metavar="N",
            help=f"{limit.counts}; 0: unlimited, default: server's",
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
    given = given_settings(args)
    data_dir = choose_data_dir(given.pop("data_dir", None))
    try:
        return Settings(**given, data_dir=data_dir.path), data_dir
    except ValidationError as exc:
        sys.exit(f"vary: invalid setting: {_invalid(exc)}")
    except SettingsError as exc:  # a VARY_*_FILE that cannot be read
        sys.exit(f"vary: {exc}")


def _invalid(exc: ValidationError) -> str:
    """pydantic's errors, one a line, with the value given except for a secret's."""
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        secret = field.startswith(("signing_secret", "database_password", "database_url"))
        given = "" if secret else f" (given: {error.get('input')!r})"
        lines.append(f"{field}: {error['msg']}{given}")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vary")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _no_database_yet(args: argparse.Namespace, data_dir: DataDir) -> None:
    """A command that makes the database says so; one that only reads it (or changes what is not there) ends:
    an empty table would hide that this is not the data dir the server uses."""
    command = (args.command, getattr(args, "keys_command", None) or getattr(args, "db_command", None))
    if command in (("keys", "create"), ("db", "upgrade")):
        print(
            f"vary: no database in {data_dir.path} yet: making one (a server started with it uses it)", file=sys.stderr
        )
        return
    sys.exit(
        f"vary: no database in {data_dir.path}: no server has run with this data dir and no key was made there. "
        "`vary serve` prints its data dir and the command that reaches its keys; pass that --data-dir "
        "(or VARY_DATA_DIR, or --database-url)."
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "create":  # a client: the server's settings do not apply
        sys.exit(create_command.run(args))
    if args.command == "eval":  # its own models and settings, no data dir
        sys.exit(eval_command.run(args))
    settings, data_dir = _settings(args)
    if args.command == "pull":
        # As for serve: logging before the ML libraries are imported (they log), and only for this command.
        configure_logging("text", level=settings.log_level, progress_bars=True)
        from vary.cli import pull

        sys.exit(
            pull.run(
                args.models,
                settings.catalogue,
                Path(args.local_dir) if args.local_dir else None,
                settings,
            )
        )
    if args.command == "serve":
        # Logging first: importing the server (torch, diffusers) already logs, in the log's format. The server's
        # module is imported only here so that `vary keys` and the other commands never load torch.
        configure_logging(settings.log_format, level=settings.log_level)
        if not settings.ray_address:  # a busy port in one line, before torch and the models load (with Ray,
            problem = address_problem(settings.host, settings.port)  # the cluster's proxy listens instead)
            if problem:
                sys.exit(f"vary: {problem}")
        from vary.cli.serve import serve

        serve(settings, data_dir)
        return
    print(f"vary: {data_dir.line()}", file=sys.stderr)  # stdout stays the command's own output
    if settings.database_url is not None:
        print(f"vary: database {shown(settings.database_url)}", file=sys.stderr)
    elif not settings.db_path.is_file():
        _no_database_yet(args, data_dir)
    try:
        if args.command == "usage":
            usage_command.run(args, settings)
        elif args.command == "db":
            db_command.run(args, settings)
        elif args.command == "secret":
            secret_command.run(args, settings)
        else:
            keys_command.run(args, settings)
    except DatabaseSetupError as exc:
        sys.exit(f"vary: {exc}")
    except (DatabaseUnavailable, SQLAlchemyError) as exc:
        # The database went away (or timed out) during the command: one line, never a traceback.
        sys.exit(f"vary: the database stopped answering during `vary {args.command}`: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The driver's own first line (psycopg's and SQLite's name the host, never the password)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return clipped(lines[0], 300) if lines else type(exc).__name__


if __name__ == "__main__":
    main()
