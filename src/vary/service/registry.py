"""Model names to what serves them: each served model is an ordered list of Targets; aliases (dall-e-2).

A local model is one LocalModel target (its engine behind a scheduler), a hosted provider one
HostedProvider target, and a route the targets of the models it names, in order. A target is built
once and shared: a local model in two routes has one queue.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

from vary.engines.base import Engine, ModelInfo
from vary.engines.diffusion import Placement
from vary.errors import ModelNotFound
from vary.imaging import ImageDecoder
from vary.safety.policy import NO_CHECKS, SafetyPolicy
from vary.service.catalogue import ROUTE, Catalogue, CatalogueEntry
from vary.targets.base import Target
from vary.targets.hosted.provider import DEFAULT_DEADLINE_SECONDS, HostedProvider
from vary.targets.local_model import LocalModel

# Wraps an engine in the target that serves it; the app passes one with its queue settings and decoder.
LocalModelFactory = Callable[[Engine], LocalModel]
# Serves a local model from elsewhere (vary.targets.ray_replica.RayTarget: a Ray Serve deployment holds the weights).
RemoteModelFactory = Callable[[CatalogueEntry], Target]


def default_local_model(engine: Engine) -> LocalModel:
    return LocalModel(engine, decoder=ImageDecoder())


@dataclass(frozen=True)
class ServedModel:
    id: str
    info: ModelInfo
    targets: tuple[Target, ...]
    engine: Engine | None = None  # the engine, when the model is a local one
    alias_of: str | None = None
    eager: bool = True  # loaded and warmed up at start, rather than on its first request
    deadline_seconds: float | None = None  # for every attempt and wait of a request; None: none (a local model)
    safety: SafetyPolicy = NO_CHECKS  # the content policy; a route's applies to whichever target answers

    @property
    def loaded(self) -> bool:
        return self.engine.loaded if self.engine is not None else True


class ModelRegistry:
    def __init__(
        self,
        models: list[ServedModel],
        *,
        local: list[LocalModel] | None = None,
        hosted: list[HostedProvider] | None = None,
        aliases: dict[str, str] | None = None,
        default: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("at least one model must be served")
        self.local = local or []
        self.hosted = hosted or []
        by_id = {model.id: model for model in models}
        self.default = by_id[default] if default else models[0]
        self._by_name = dict(by_id)
        aliases = aliases if aliases is not None else {"dall-e-2": self.default.id}
        for alias, target in aliases.items():
            model = by_id[target]
            self._by_name.setdefault(alias, dataclasses.replace(model, id=alias, alias_of=target, eager=True))

    @classmethod
    def of_engines(
        cls,
        engines: list[Engine],
        *,
        local: LocalModelFactory = default_local_model,
        safety: SafetyPolicy = NO_CHECKS,
    ) -> ModelRegistry:
        """Local engines served under their own names, all eager, under one content policy; the first is default."""
        targets = [local(engine) for engine in engines]
        models = [ServedModel(t.name, t.engine.info, (t,), t.engine, safety=safety) for t in targets]
        return cls(models, local=targets)

    @classmethod
    def from_catalogue(
        cls,
        catalogue: Catalogue,
        *,
        placement: Placement,
        overrides: dict[str, object] | None = None,
        local: LocalModelFactory = default_local_model,
        remote: RemoteModelFactory | None = None,
        safety: SafetyPolicy = NO_CHECKS,
    ) -> ModelRegistry:
        """Every model's targets, built but not loaded: loading is the lifespan's (eager) or the first request's.

        With `remote`, the local models are served elsewhere: their targets come from it, and their
        engines, never loaded here, only describe them.
        """
        by_name: dict[str, ServedModel] = {}
        local_models: list[LocalModel] = []
        hosted: list[HostedProvider] = []
        for model in catalogue.models:
            if model.hosted:
                upstream = model.build_provider()
                hosted.append(upstream)
                by_name[model.name] = ServedModel(
                    model.name,
                    upstream.info,
                    (upstream,),
                    deadline_seconds=upstream.deadline_seconds,
                    safety=model.safety_policy(safety),
                )
            elif model.engine != ROUTE:
                engine = model.build(placement=placement, overrides=overrides)
                if remote is not None:
                    by_name[model.name] = ServedModel(
                        model.name, engine.info, (remote(model),), safety=model.safety_policy(safety)
                    )
                    continue
                target = local(engine)
                local_models.append(target)
                by_name[model.name] = ServedModel(
                    model.name, engine.info, (target,), engine, eager=model.eager, safety=model.safety_policy(safety)
                )
        for model in catalogue.models:
            if model.engine == ROUTE:
                members = tuple(target for name in model.route for target in by_name[name].targets)
                description = model.description or "Tries, in order: " + ", ".join(model.route) + "."
                first = by_name[model.route[0]].info
                info = ModelInfo(
                    model.name,
                    "vary",
                    description,
                    model.license or "that of the target that answers",
                    # What every target honours, so a request means the same whichever one answers.
                    capabilities=functools.reduce(
                        lambda shared, name: shared.shared(by_name[name].info.capabilities),
                        model.route[1:],
                        first.capabilities,
                    ),
                    defaults=first.defaults,
                )
                deadline = model.deadline_seconds or DEFAULT_DEADLINE_SECONDS
                by_name[model.name] = ServedModel(
                    model.name, info, members, deadline_seconds=deadline, safety=model.safety_policy(safety)
                )
        return cls(
            [by_name[model.name] for model in catalogue.models],
            local=local_models,
            hosted=hosted,
            aliases=catalogue.aliases(),
            default=catalogue.default,
        )

    def resolve(self, name: str | None) -> ServedModel:
        """What serves a request's `model` field; None means the default model."""
        if name is None:
            return self.default
        served = self._by_name.get(name)
        if served is None:
            raise ModelNotFound(name)
        return served

    def served(self) -> list[ServedModel]:
        return list(self._by_name.values())

    def models(self) -> list[ServedModel]:
        """The models themselves, without their aliases."""
        return [model for model in self._by_name.values() if model.alias_of is None]

    def engines(self) -> list[Engine]:
        """The local engines: what gets a scheduler, a warm-up and a GPU."""
        return [target.engine for target in self.local]

    def to_warm_up(self) -> list[Engine]:
        """The local engines to load and warm up at start: the eager ones."""
        return [m.engine for m in self.models() if m.engine is not None and m.eager]
