"""Model names to engines: the served models, their aliases (dall-e-2), and which load at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vary.api.errors import model_not_found
from vary.config import Catalogue
from vary.engines.base import Engine
from vary.engines.diffusion import Placement


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: Engine
    alias_of: str | None = None
    eager: bool = True  # loaded and warmed up at start, rather than on its first request


class ModelRegistry:
    def __init__(
        self,
        engines: list[Engine],
        *,
        aliases: dict[str, str] | None = None,
        default: str | None = None,
        lazy: frozenset[str] = frozenset(),
    ) -> None:
        if not engines:
            raise ValueError("at least one model must be served")
        by_id = {engine.info.id: engine for engine in engines}
        self.default = by_id[default] if default else engines[0]
        self._by_name: dict[str, ServedModel] = {
            name: ServedModel(name, engine, eager=name not in lazy) for name, engine in by_id.items()
        }
        aliases = aliases if aliases is not None else {"dall-e-2": self.default.info.id}
        for alias, target in aliases.items():
            self._by_name.setdefault(alias, ServedModel(alias, by_id[target], alias_of=target))

    @classmethod
    def from_catalogue(
        cls, catalogue: Catalogue, *, placement: Placement, overrides: dict[str, Any] | None = None
    ) -> ModelRegistry:
        """Every model's engine, built but not loaded: loading is the lifespan's (eager) or the first request's."""
        engines: list[Engine] = [model.build(placement=placement, overrides=overrides) for model in catalogue.models]
        return cls(
            engines,
            aliases=catalogue.aliases(),
            default=catalogue.default,
            lazy=frozenset(model.name for model in catalogue.models if not model.eager),
        )

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

    def models(self) -> list[ServedModel]:
        """The models themselves, without their aliases."""
        return [model for model in self._by_name.values() if model.alias_of is None]

    def engines(self) -> list[Engine]:
        return [model.engine for model in self.models()]
