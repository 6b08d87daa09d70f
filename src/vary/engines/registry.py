"""Every local engine by its catalogue name, and the built-in model ids they answer to.

An engine module registers its class with `@register_engine`; `engine_types()` imports every module of
this package first, so a new model is one new module here and nothing else names it. What the class
declares (names, weights, licence, tiny twin, pipelines, denoiser, image encoder, capabilities) is
all the catalogue, `vary pull` and `/v1/models` need to know of it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from vary.engines.diffusion import TINY_WEIGHTS, DiffusionEngine

E = TypeVar("E", bound=type[DiffusionEngine])
_ENGINES: dict[str, type[DiffusionEngine]] = {}


def register_engine(engine: E) -> E:
    """Class decorator: `engine` answers to its `engine_id` in catalogues."""
    known = _ENGINES.get(engine.engine_id)
    if known is not None and known.__qualname__ != engine.__qualname__:
        raise RuntimeError(f"two engines are named {engine.engine_id!r}: {known.__qualname__}, {engine.__qualname__}")
    _ENGINES[engine.engine_id] = engine
    return engine


def engine_types() -> Mapping[str, type[DiffusionEngine]]:
    """engine id -> its class, every module of vary.engines imported first."""
    package = importlib.import_module("vary.engines")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"vary.engines.{module.name}")
    return MappingProxyType(_ENGINES)


def builtin_models() -> dict[str, tuple[str, str | None]]:
    """The names `--model` accepts besides a directory: model id -> (engine id, weights; None: the default)."""
    models: dict[str, tuple[str, str | None]] = {}
    for engine_id, engine in engine_types().items():
        models[engine_id] = (engine_id, None)
        models.update({name: (engine_id, weights) for name, weights in engine.also_served_as.items()})
    for engine_id, engine in engine_types().items():  # the tiny twins after the real models, as help lists them
        models[engine.tiny_name] = (engine_id, TINY_WEIGHTS)
    return models


def engine_of_directory(path: Path) -> str | None:
    """The engine whose layout a local model directory has, if any."""
    return next((engine_id for engine_id, engine in engine_types().items() if engine.recognises(path)), None)
