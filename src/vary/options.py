"""A model's options, as a catalogue's [models.options] table gives them: one base for local engines and
hosted providers alike, with the one check of names, types and bounds.

An options type is a frozen dataclass whose fields are the option names, with their defaults. `of`
builds one from untrusted values (a TOML table, a JSON file): unknown names, wrong types and values
outside a field's bounds (the subclass's `__post_init__`) are refused with one line that says which.
Types are checked strictly, as JSON types: "3" is not a number and true is not 1.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

OptionsT = TypeVar("OptionsT", bound="Options")


@dataclasses.dataclass(frozen=True)
class Options:
    # pydantic reads this to check the fields' types; "forbid" refuses names the type does not declare.
    __pydantic_config__ = ConfigDict(extra="forbid")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls: type[OptionsT], values: Mapping[str, Any]) -> OptionsT:
        """The options `values` name, the others at their defaults; ValueError says what is wrong."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(cls.names()))}")
        try:
            document = json.dumps(dict(values))
        except (TypeError, ValueError):
            raise ValueError("options must be numbers, strings, booleans or lists of them") from None
        try:
            options: OptionsT = _adapter(cls).validate_json(document, strict=True)
        except ValidationError as exc:
            raise ValueError(_one_line(exc)) from None
        return options

    def merged(self: OptionsT, **overrides: Any) -> OptionsT:
        """A copy with `overrides` applied, checked as `of` checks; None leaves a field as it is."""
        given = {name: value for name, value in overrides.items() if value is not None}
        if not given:
            return self
        return type(self).of({**dataclasses.asdict(self), **given})


_ADAPTERS: dict[type[Options], TypeAdapter[Any]] = {}


def _adapter(cls: type[Options]) -> TypeAdapter[Any]:
    """The type's validator, built once (building one takes milliseconds)."""
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = str(error["msg"])
    if error["type"] == "value_error":  # the type's own bound check, in its own words
        return message.removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"])
    return f"option {where!r}: {message[:1].lower()}{message[1:]}" if where else message
