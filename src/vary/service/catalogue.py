"""The model catalogue: which models are served, read from a TOML file or made from `--model`.

    default = "kandinsky-2.2"          # optional: the model for requests without `model`; else the first

    [[models]]
    name = "kandinsky-2.2"             # the id clients send as `model`
    engine = "kandinsky-2.2"           # a local engine or a hosted provider (vary.engines, vary.targets.hosted)
    weights = "kandinsky-community/kandinsky-2-2-decoder"   # optional: a Hub id, a local path, or "tiny-random"
    aliases = ["dall-e-2"]             # optional
    load = "eager"                     # or "lazy": on the first request for it
    license = "apache-2.0"             # optional: overrides the engine's
    accept_license = "flux-1-dev-non-commercial"   # the licence the engine's weights need accepted, if any
    description = "..."                # optional
    [models.defaults]                  # per-request defaults: steps, guidance_scale
    [models.options]                   # the engine's own settings (sampler, render sides, noise_level, ...)
    [models.ray]                       # `vary serve --ray`: Ray Serve's deployment options, as they are
    [models.safety]                    # the content policy (vary.safety.policy, docs/safety.md); a route may
                                       # carry its own; keys not given come from VARY_SAFETY_*

    [ray.edge]                         # optional, `vary serve --ray`: the HTTP edge deployment's options

Every mistake is reported with the file and the model it is in, before anything loads.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

from vary.engines.diffusion import OPTIONS_FILE, TINY_WEIGHTS, DiffusionEngine, Placement, read_options_file
from vary.engines.registry import builtin_models, engine_of_directory, engine_types
from vary.safety.policy import SafetyPolicy
from vary.targets.hosted.provider import HostedProvider
from vary.targets.hosted.registry import provider_types

log = logging.getLogger("vary")

ROUTE = "route"  # the engine of a model that is an ordered list of other models
# Unchanged OpenAI clients may send dall-e-2; unless the catalogue gives it to a model, it names the default.
DALL_E_2 = "dall-e-2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_MODEL_KEYS = {
    "name",
    "engine",
    "weights",
    "aliases",
    "load",
    "license",
    "description",
    "defaults",
    "options",
    "route",
    "deadline_seconds",
    "ray",
    "safety",
    "accept_license",
}
_DEFAULTS_KEYS = {"steps", "guidance_scale"}


class CatalogueError(ValueError):
    pass


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    engine: str  # a local engine, a hosted provider's, or ROUTE
    weights: str | None = None
    aliases: tuple[str, ...] = ()
    eager: bool = True
    license: str | None = None
    description: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # defaults and engine options, one namespace
    route: tuple[str, ...] = ()  # for a route: the models it tries, in order
    deadline_seconds: float | None = None  # for a route: its whole time, every attempt and wait in it
    ray: dict[str, Any] = field(default_factory=dict)  # Ray Serve's deployment options (vary serve --ray)
    # [models.safety] as written: its keys override the server's default policy (SafetyPolicy.merged).
    safety: dict[str, Any] | None = None
    # The licences the operator accepted for this model's weights (`accept_license`, or VARY_ACCEPT_LICENSE).
    accepted_licenses: tuple[str, ...] = ()

    def safety_policy(self, default: SafetyPolicy) -> SafetyPolicy:
        return default.merged(self.safety) if self.safety is not None else default

    @property
    def hosted(self) -> bool:
        return self.engine in provider_types()

    @property
    def local(self) -> bool:
        return self.engine in engine_types()

    def build_provider(self) -> HostedProvider:
        provider = provider_types()[self.engine]
        return provider(
            name=self.name,
            engine=self.engine,
            options=provider.options_for(self.engine, self.options),
            license=self.license,
            description=self.description,
        )

    def build(self, *, placement: Placement | None = None, overrides: dict[str, Any] | None = None) -> DiffusionEngine:
        """The engine, not loaded yet. `overrides` (the VARY_* generation settings) win over the file's options."""
        engine = engine_types()[self.engine]
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if given.get("sampler") not in (None, *engine.samplers):
            log.warning(
                "model %s: VARY_SAMPLER=%s does not apply to %s, which samples with %s",
                self.name,
                given.pop("sampler"),
                self.engine,
                " or ".join(engine.samplers),
            )
        return engine(
            name=self.name,
            weights=self.weights,
            placement=placement or Placement(),
            license=self.license,
            description=self.description,
            accepted_licenses=self.accepted_licenses,
            **{**self.options, **given},
        )


@dataclass(frozen=True)
class Catalogue:
    models: tuple[CatalogueEntry, ...]
    default: str
    ray_edge: dict[str, Any] = field(default_factory=dict)  # [ray.edge]: the HTTP edge's Ray Serve options

    def aliases(self) -> dict[str, str]:
        """alias -> model name, with dall-e-2 pointing at the default unless a model claims it."""
        mapping = {alias: model.name for model in self.models for alias in model.aliases}
        if DALL_E_2 not in mapping and all(model.name != DALL_E_2 for model in self.models):
            mapping[DALL_E_2] = self.default
        return mapping


def lifecycle_warnings(catalogue: Catalogue, day: datetime.date | None = None) -> list[str]:
    """One line for each hosted model whose service is not live (today, unless `day`), as its provider declares."""
    lines = []
    for model in catalogue.models:
        if model.hosted:
            provider = provider_types()[model.engine]
            lifecycle = provider.lifecycle_of(model.engine, provider.options_for(model.engine, model.options))
            line = lifecycle.warning(model.engine, model.name, day)
            if line is not None:
                lines.append(line)
    return lines


def catalogue_for(config: Path | None, model: str, accepted_licenses: Collection[str] = ()) -> Catalogue:
    """The file's catalogue when there is one, else the single model `--model` names.

    `accepted_licenses` (VARY_ACCEPT_LICENSE) are for `--model`; a file accepts per model (`accept_license`)."""
    if config is not None:
        return read_catalogue(config)
    return Catalogue((model_for_spec(model, accepted_licenses),), default=_model_name(model))


def model_for_spec(spec: str, accepted_licenses: Collection[str] = ()) -> CatalogueEntry:
    """`--model`: a built-in name, or a local directory whose engine is recognised from its layout. A model whose
    weights need a licence accepted is refused, before anything loads, unless `accepted_licenses` has it."""
    entry = _spec_entry(spec)
    engine = engine_types()[entry.engine]
    stored = read_options_file(entry.weights) if entry.weights and entry.weights != TINY_WEIGHTS else {}
    try:
        options = engine.options_type.of(stored)
    except ValueError as exc:
        raise CatalogueError(f"{entry.weights}: its {OPTIONS_FILE}: {exc}") from None
    terms = engine.license_to_accept(entry.weights, options)
    if terms is None:
        return entry
    if terms.id not in accepted_licenses:
        raise CatalogueError(
            f"--model {spec}: its weights are under the {terms.name} ({terms.url}); to accept it, start with "
            f"--accept-license {terms.id} (or VARY_ACCEPT_LICENSE={terms.id})"
        )
    return dataclasses.replace(entry, accepted_licenses=(terms.id,))


def _spec_entry(spec: str) -> CatalogueEntry:
    builtin = builtin_models()
    if spec in builtin:
        engine_id, weights = builtin[spec]
        return CatalogueEntry(name=spec, engine=engine_id, weights=weights)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise CatalogueError(
            f"unknown model {spec!r}: use one of {', '.join(builtin)}, a local model directory, or --catalogue"
        )
    engine = engine_of_directory(path)
    if engine is None:
        raise CatalogueError(
            f"{path} is not a model directory vary recognises (see docs/models.md, local model directories)"
        )
    return CatalogueEntry(name=_model_name(spec), engine=engine, weights=str(path))


def _model_name(spec: str) -> str:
    return spec if spec in builtin_models() else Path(spec).expanduser().resolve().name


def read_catalogue(path: Path) -> Catalogue:
    where = str(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError(f"{where}: cannot read the file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{where}: not valid TOML: {exc}") from None
    unknown = set(document) - {"default", "models", "ray"}
    if unknown:
        raise CatalogueError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected 'default', [[models]] and [ray]")
    ray = _table(document, "ray", where)
    if set(ray) - {"edge"}:
        raise CatalogueError(f"{where}: unknown key {sorted(set(ray) - {'edge'})[0]!r} in [ray]; expected [ray.edge]")
    entries = document.get("models")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise CatalogueError(f"{where}: declare at least one model as a [[models]] table")
    models = tuple(_model(entry, f"{where}: models[{i}]", path.parent) for i, entry in enumerate(entries))

    names = {model.name for model in models}
    for model in models:
        for member in model.route:
            if member not in names:
                raise CatalogueError(f"{where}: model {model.name!r}: its route names {member!r}, which is not a model")
            if next(m for m in models if m.name == member).engine == ROUTE:
                raise CatalogueError(f"{where}: model {model.name!r}: its route names {member!r}, which is a route")
    models = tuple(_route_safety(model, models, where) for model in models)
    for model in models:
        _check_hands_on_urls(model, models, where)
    taken: dict[str, str] = {}
    for model in models:
        for name in (model.name, *model.aliases):
            if name in taken:
                raise CatalogueError(f"{where}: the name {name!r} is used twice ({taken[name]} and {model.name})")
            taken[name] = model.name
    default = document.get("default", models[0].name)
    if not isinstance(default, str) or default not in taken:
        raise CatalogueError(f"{where}: default = {default!r} names no model in the file")
    return Catalogue(models, default=taken[default], ray_edge=_table(ray, "ray.edge", where, key="edge"))


def _model(entry: dict[str, Any], where: str, base: Path) -> CatalogueEntry:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CatalogueError(f"{where}: 'name' must be a model id of letters, digits, '.', '_', ':', '-'")
    where = f"{where.rsplit(':', 1)[0]}: model {name!r}"
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(_MODEL_KEYS))}")
    if "route" in entry:
        return _route(entry, where)
    if "deadline_seconds" in entry:
        raise CatalogueError(f"{where}: deadline_seconds is for a route; a hosted model takes it in its options")
    engine = entry.get("engine")
    engines, providers = engine_types(), provider_types()
    if not isinstance(engine, str) or (engine not in engines and engine not in providers):
        known = ", ".join((*engines, *providers))
        raise CatalogueError(f"{where}: unknown engine {engine!r}; use one of {known}, or give a route")
    load = entry.get("load", "eager")
    if load not in ("eager", "lazy"):
        raise CatalogueError(f'{where}: \'load\' must be "eager" or "lazy", not {load!r}')

    defaults = _table(entry, "defaults", where)
    if set(defaults) - _DEFAULTS_KEYS:
        unknown_default = sorted(set(defaults) - _DEFAULTS_KEYS)[0]
        raise CatalogueError(f"{where}: unknown default {unknown_default!r}; known: steps, guidance_scale")
    options = {**_table(entry, "options", where), **defaults}
    try:
        # Checked now, so a bad option fails at start-up, not at the first request.
        checked = providers[engine].options_for(engine, options) if engine in providers else None
        if checked is None:
            engines[engine].options_type.of(options)
    except ValueError as exc:
        raise CatalogueError(f"{where}: {exc}") from None
    if engine in providers and "weights" in entry:
        raise CatalogueError(f"{where}: a hosted provider has no weights; give options.base_url instead")
    if engine in providers and "ray" in entry:
        raise CatalogueError(f"{where}: [models.ray] is for local models; a hosted one is called from the edge")
    accepted = _accepted_licenses(entry, engine, options, where)
    safety = _safety(entry, where)
    if safety is not None and checked is not None and not checked.rehost_urls:
        if SafetyPolicy().merged(safety).checks_output:
            raise CatalogueError(f"{where}: output checks need the images: rehost_urls = false hands on URLs unchecked")
    return CatalogueEntry(
        name=name,
        engine=engine,
        weights=_weights(entry.get("weights"), where, base),
        aliases=_aliases(entry, where),
        eager=load == "eager",
        license=_optional_text(entry, "license", where),
        description=_optional_text(entry, "description", where),
        options=options,
        # Handed to Ray Serve as it is: Serve itself checks the option names and values.
        ray=_table(entry, "models.ray", where, key="ray"),
        safety=safety,
        accepted_licenses=accepted,
    )


def _accepted_licenses(entry: dict[str, Any], engine: str, options: dict[str, Any], where: str) -> tuple[str, ...]:
    """`accept_license`: a licence id, or a list of them. A local engine whose weights need one accepted is
    refused without it, in one line that names the licence and the key."""
    value = entry.get("accept_license", [])
    accepted = [value] if isinstance(value, str) else value
    if not isinstance(accepted, list) or not all(isinstance(item, str) for item in accepted):
        raise CatalogueError(f"{where}: 'accept_license' must be a licence id or a list of them")
    engines = engine_types()
    if accepted and engine not in engines:
        raise CatalogueError(f"{where}: a hosted provider loads no weights; 'accept_license' is for local models")
    known = {e.license_terms.id for e in engines.values() if e.license_terms is not None}
    unknown = sorted(set(accepted) - known)
    if unknown:
        known_ids = ", ".join(sorted(known))
        raise CatalogueError(f"{where}: accept_license names {unknown[0]!r}; the licences to accept: {known_ids}")
    if engine in engines:
        engine_type = engines[engine]
        terms = engine_type.license_to_accept(_weights_name(entry), engine_type.options_type.of(options))
        if terms is not None and terms.id not in accepted:
            raise CatalogueError(
                f"{where}: its weights are under the {terms.name} ({terms.url}); to accept it, add "
                f'accept_license = "{terms.id}" to this model'
            )
    return tuple(accepted)


def _weights_name(entry: dict[str, Any]) -> str | None:
    weights = entry.get("weights")
    return weights if isinstance(weights, str) else None


def _route(entry: dict[str, Any], where: str) -> CatalogueEntry:
    members = entry["route"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise CatalogueError(f"{where}: 'route' must be a list of model names, tried in order")
    keys = ("name", "route", "aliases", "description", "license", "deadline_seconds", "safety")
    extra = sorted(set(entry) - set(keys))
    if extra:
        raise CatalogueError(f"{where}: a route takes {', '.join(keys)}, not {extra[0]!r}")
    deadline = entry.get("deadline_seconds")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or deadline <= 0):
        raise CatalogueError(f"{where}: deadline_seconds must be a number of seconds above 0")
    return CatalogueEntry(
        name=entry["name"],
        engine=ROUTE,
        aliases=_aliases(entry, where),
        license=_optional_text(entry, "license", where),
        description=_optional_text(entry, "description", where),
        route=tuple(members),
        deadline_seconds=float(deadline) if deadline is not None else None,
        safety=_safety(entry, where),
    )


def _safety(entry: dict[str, Any], where: str) -> dict[str, Any] | None:
    """[models.safety], checked now over the built-in defaults so a bad key or value fails at start."""
    if "safety" not in entry:
        return None
    table = _table(entry, "models.safety", where, key="safety")
    try:
        SafetyPolicy().merged(table)
    except ValueError as exc:
        raise CatalogueError(f"{where}: {exc}") from None
    return table


def _route_safety(route: CatalogueEntry, models: tuple[CatalogueEntry, ...], where: str) -> CatalogueEntry:
    """A route without its own [models.safety] takes its models' one table; it must not pick between
    policies by whichever target answers (the input is checked before any target is tried)."""
    if route.engine != ROUTE or route.safety is not None:
        return route
    tables = [m.safety for m in models if m.name in route.route]
    if len({json.dumps(table, sort_keys=True) for table in tables}) > 1:
        raise CatalogueError(
            f"{where}: model {route.name!r}: its route's models have different [models.safety] tables; "
            "give the route its own [models.safety]"
        )
    return dataclasses.replace(route, safety=tables[0]) if tables else route


def _check_hands_on_urls(model: CatalogueEntry, models: tuple[CatalogueEntry, ...], where: str) -> None:
    """Output checks need the images: a provider whose URLs are handed on as they are cannot have them."""
    if model.engine != ROUTE or model.safety is None or not SafetyPolicy().merged(model.safety).checks_output:
        return
    for member in models:
        if member.name in model.route and member.options.get("rehost_urls") is False:
            raise CatalogueError(
                f"{where}: model {model.name!r}: output checks need the images, and {member.name!r} hands on "
                "its provider's URLs (rehost_urls = false)"
            )


def _aliases(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and _NAME.fullmatch(a) for a in aliases):
        raise CatalogueError(f"{where}: 'aliases' must be a list of model ids")
    return tuple(aliases)


def _optional_text(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise CatalogueError(f"{where}: {key!r} must be a string")
    return value


def _table(entry: dict[str, Any], name: str, where: str, *, key: str | None = None) -> dict[str, Any]:
    value = entry.get(key or name, {})
    if not isinstance(value, dict):
        raise CatalogueError(f"{where}: [{name}] must be a table")
    return value


def _weights(value: object, where: str, base: Path) -> str | None:
    """A Hub id (org/name), "tiny-random", or a local path, relative to the config file's directory."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CatalogueError(f"{where}: 'weights' must be a Hub id, a local path or \"tiny-random\"")
    if value == TINY_WEIGHTS:
        return value
    path = (base / value).expanduser() if not value.startswith("~") else Path(value).expanduser()
    if path.is_dir():
        return str(path)
    if value.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(value):
        raise CatalogueError(f"{where}: the weights path {value!r} does not exist (resolved to {path})")
    return value
