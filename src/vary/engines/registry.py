"""Model names to engines: the served model, its aliases (dall-e-2), and what `--model` may name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vary.api.errors import model_not_found
from vary.engines.base import Engine
from vary.engines.kandinsky import DECODER_REPO, PRIOR_REPO, KandinskyVariationEngine, Placement, RenderOptions

DEFAULT_MODEL = "kandinsky-2.2"
TINY_MODEL = "tiny-random"
# Unchanged OpenAI clients send (or default to) dall-e-2; it names whatever is served by default.
DEFAULT_ALIASES = ("dall-e-2",)


class UnknownModelSpec(ValueError):
    pass


def check_model_spec(spec: str) -> None:
    """Fails fast, before any server starts, on a `--model` that names nothing."""
    if spec not in (DEFAULT_MODEL, TINY_MODEL) and not Path(spec).expanduser().is_dir():
        raise UnknownModelSpec(
            f"unknown model {spec!r}: use {DEFAULT_MODEL!r}, {TINY_MODEL!r}, or a local model directory"
        )


def load_engine(spec: str, *, placement: Placement | None = None, **overrides: Any) -> Engine:
    """`spec` is a built-in model id or a local model directory; `overrides` replace RenderOptions fields."""
    placement = placement or Placement()
    if spec == DEFAULT_MODEL:
        return KandinskyVariationEngine.load(
            name=DEFAULT_MODEL,
            prior=PRIOR_REPO,
            decoder=DECODER_REPO,
            options=RenderOptions().merged(**overrides),
            placement=placement,
        )
    if spec == TINY_MODEL:
        return KandinskyVariationEngine.tiny_random(placement=placement, **overrides)
    check_model_spec(spec)
    return KandinskyVariationEngine.from_directory(Path(spec).expanduser(), placement=placement, **overrides)


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: Engine
    alias_of: str | None = None


class ModelRegistry:
    def __init__(self, engines: list[Engine], *, aliases: tuple[str, ...] = DEFAULT_ALIASES) -> None:
        if not engines:
            raise ValueError("at least one model must be served")
        self.default = engines[0]
        self._by_name: dict[str, ServedModel] = {e.info.id: ServedModel(e.info.id, e) for e in engines}
        for alias in aliases:
            self._by_name.setdefault(alias, ServedModel(alias, self.default, alias_of=self.default.info.id))

    def resolve(self, name: str | None) -> Engine:
        """The engine for a request's `model` field; None means the default model."""
        if name is None:
            return self.default
        served = self._by_name.get(name)
        if served is None:
            raise model_not_found(name)
        return served.engine

    def get(self, name: str) -> ServedModel | None:
        return self._by_name.get(name)

    def served(self) -> list[ServedModel]:
        return list(self._by_name.values())

    def engines(self) -> list[Engine]:
        return list({id(m.engine): m.engine for m in self._by_name.values()}.values())
