"""Command-line flags derived from the settings model: each setting is declared once, in vary/settings.py.

A flag's name is the field's (`max_image_bytes` -> `--max-image-bytes`), its type and choices come from
the annotation, its help from the description, default and environment variable. A flag left out keeps
the environment's value (VARY_<FIELD>) or the default: pydantic-settings reads those when the command
builds its Settings from what was given.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vary.settings import SECTIONS, Settings

# Flags whose name is not the field's own: shorter, or kept from earlier releases.
RENAMED = {"ray_address": ["--ray"], "catalogue": ["--catalogue"], "config": ["--config"]}
METAVARS = {
    "ray_address": "ADDRESS",
    "catalogue": "FILE",
    "config": "FILE",
    "api_key_headers": "HEADER",
    "allowed_hosts": "HOSTS",
    "data_dir": "DIR",
    "database_url": "URL",
    "storage_url": "URL",
    "public_url": "URL",
    "rate_limit_storage": "URL",
}


class OneLineHelp(argparse.HelpFormatter):
    """Each flag and its help on one line, never wrapped: the sections keep a long list readable."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=46, width=1000)


def flags_of(name: str) -> list[str]:
    return RENAMED.get(name, ["--" + name.replace("_", "-")])


def add_settings_flags(
    parser: argparse.ArgumentParser, names: typing.Iterable[str] | None = None, *, sections: bool = False
) -> None:
    """A flag for each named setting (all but secrets when None), dest = the field's name, default None.

    `sections`: the flags grouped under their settings' sections (`vary serve --help`), in SECTIONS' order."""
    fields = Settings.model_fields
    groups = {section: parser.add_argument_group(section) for section in SECTIONS} if sections else {}
    for name in names if names is not None else fields:
        field = fields[name]
        kind, choices = _kind(field.annotation)
        if kind is SecretStr:
            continue  # never on a command line: a process list shows it
        options: dict[str, Any] = {"dest": name, "default": None, "help": _help(name, field)}
        if kind is bool:
            options["action"] = "store_true"
        else:
            options["metavar"] = METAVARS.get(name) or _metavar(name, kind)
            if choices:
                options["choices"] = choices
                options["metavar"] = name.rsplit("_", 1)[-1].upper()
                options["help"] = f"{options['help']}; one of {', '.join(choices)}"
            elif kind in (int, float):
                options["type"] = kind
            elif typing.get_origin(kind) is tuple:  # a list of values: --api-key-headers api-key x-team-key
                options["nargs"] = "+"
        section = (field.json_schema_extra or {}).get("section") if isinstance(field.json_schema_extra, dict) else None
        target = groups.get(str(section), parser) if sections else parser
        target.add_argument(*flags_of(name), **options)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command line named, by field name; the rest come from the environment or defaults."""
    return {name: value for name in Settings.model_fields if (value := getattr(args, name, None)) is not None}


def _kind(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """The one type behind `X | None`, and a Literal's choices."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _kind(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str, tuple(str(arg) for arg in typing.get_args(annotation))
    return annotation, ()


def _metavar(name: str, kind: Any) -> str:
    if kind is int:
        return "N"
    if kind is float:
        return "SECONDS" if name.endswith("_seconds") else "X"
    return name.rsplit("_", 1)[-1].upper()


def _help(name: str, field: FieldInfo) -> str:
    """The description and the default (unless computed at run time, or none); the environment variable where
    its name is not the flag's (the rule for the others is said once, in the epilog)."""
    default = field.default
    shown = default not in (PydanticUndefined, None, False)
    notes = [f"default {', '.join(default) if isinstance(default, tuple) else default}"] if shown else []
    if flags_of(name) != ["--" + name.replace("_", "-")]:
        notes.append(f"VARY_{name.upper()}")
    description = field.description or name.replace("_", " ")
    return f"{description} ({'; '.join(notes)})" if notes else description


# `vary serve --help`'s last words: how a flag's environment variable is named.
ENVIRONMENT_NOTE = "Every flag is also an environment variable: --max-image-bytes N is VARY_MAX_IMAGE_BYTES=N."
