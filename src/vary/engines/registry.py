"""Model names to engines: local models, upstream providers and routes over them; aliases (dall-e-2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vary.api.errors import model_not_found
from vary.config import ROUTE, Catalogue
from vary.engines.base import Engine, ModelInfo
from vary.engines.diffusion import Placement
from vary.engines.upstream import UPSTREAM_ENGINES, UpstreamEngine


@dataclass(frozen=True)
class Route:
    """A model name that tries other models in order (see gateway.py)."""

    info: ModelInfo
    targets: tuple[Any, ...]
    loaded: bool = True


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: Engine
    alias_of: str | None = None
    eager: bool = True  # loaded and warmed up at start, rather than on its first request


class ModelRegistry:
    def __init__(
        self,
        engines: list[Any],
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
        built: dict[str, Any] = {}
        for model in catalogue.models:
            if model.engine in UPSTREAM_ENGINES:
                built[model.name] = model.build_upstream()
            elif model.engine != ROUTE:
                built[model.name] = model.build(placement=placement, overrides=overrides)
        for model in catalogue.models:
            if model.engine == ROUTE:
                targets = tuple(built[name] for name in model.route)
                description = model.description or "Tries, in order: " + ", ".join(model.route) + "."
                info = ModelInfo(model.name, "vary", description, model.license or "that of the target that answers")
                built[model.name] = Route(info, targets)
        engines = [built[model.name] for model in catalogue.models]
        return cls(
            engines,
            aliases=catalogue.aliases(),
            default=catalogue.default,
            lazy=frozenset(model.name for model in catalogue.models if not model.eager),
        )

    def resolve(self, name: str | None) -> Any:
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
        """The local engines: what gets a scheduler, a warm-up and a GPU."""
        return [m.engine for m in self.models() if not isinstance(m.engine, (UpstreamEngine, Route))]

    def to_warm_up(self) -> list[Engine]:
        """The local engines to load and warm up at start: the eager ones."""
        return [m.engine for m in self.models() if m.eager and not isinstance(m.engine, (UpstreamEngine, Route))]

    def upstreams(self) -> list[UpstreamEngine]:
        return [m.engine for m in self.models() if isinstance(m.engine, UpstreamEngine)]

    def targets(self, name: str | None) -> list[Any]:
        """What a request for `name` may be served by, in order."""
        served = self.resolve(name)
        return list(served.targets) if isinstance(served, Route) else [served]
