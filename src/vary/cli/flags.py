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

from vary.settings import Settings

# Flags whose name is not the field's own: shorter, or kept from earlier releases.
RENAMED = {"ray_address": ["--ray"], "catalogue": ["--catalogue"], "config": ["--config"]}
METAVARS = {"ray_address": "ADDRESS", "catalogue": "FILE", "config": "FILE", "api_key_headers": "HEADER"}


def flags_of(name: str) -> list[str]:
    return RENAMED.get(name, ["--" + name.replace("_", "-")])


def add_settings_flags(parser: argparse.ArgumentParser, names: typing.Iterable[str] | None = None) -> None:
    """A flag for each named setting (all but secrets when None), dest = the field's name, default None."""
    fields = Settings.model_fields
    for name in names if names is not None else fields:
        field = fields[name]
        kind, choices = _kind(field.annotation)
        if kind is SecretStr:
            continue  # never on a command line: a process list shows it
        options: dict[str, Any] = {"dest": name, "default": None, "help": _help(name, field)}
        if kind is bool:
            options["action"] = "store_true"
        else:
            options["metavar"] = METAVARS.get(name, name.upper())
            if choices:
                options["choices"] = choices
                options.pop("metavar")
            elif kind in (int, float):
                options["type"] = kind
            elif typing.get_origin(kind) is tuple:  # a list of values: --api-key-headers api-key x-team-key
                options["nargs"] = "+"
        parser.add_argument(*flags_of(name), **options)


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


def _help(name: str, field: FieldInfo) -> str:
    """The description, the default (unless computed at run time, or none) and the environment variable."""
    shown = field.default not in (PydanticUndefined, None, False)
    default = f"default {field.default}; " if shown else ""
    return f"{field.description or name.replace('_', ' ')} ({default}VARY_{name.upper()})"
