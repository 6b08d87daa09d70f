"""Every hosted provider by the catalogue engine names it answers to.

A provider module registers its class with `@register_provider`; `provider_types()` imports every
module of this package first, so a new provider is one new module here and nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from vary.targets.hosted.provider import HostedProvider

P = TypeVar("P", bound=type[HostedProvider])
_PROVIDERS: dict[str, type[HostedProvider]] = {}


def register_provider(provider: P) -> P:
    """Class decorator: `provider` answers to each of its `engines` in catalogues."""
    for engine in provider.engines:
        known = _PROVIDERS.get(engine)
        if known is not None and known.__qualname__ != provider.__qualname__:
            raise RuntimeError(f"two providers answer to {engine!r}: {known.__qualname__}, {provider.__qualname__}")
        _PROVIDERS[engine] = provider
    return provider


def provider_types() -> Mapping[str, type[HostedProvider]]:
    """engine name -> the provider class, every module of vary.targets.hosted imported first."""
    package = importlib.import_module("vary.targets.hosted")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"vary.targets.hosted.{module.name}")
    return MappingProxyType(_PROVIDERS)
