"""The variation service as the app's lifespan builds and runs it, for one process that is not a server.

The registry comes from the caller (the CLI builds it with vary.app.build_registry, as `vary serve`
does); here its eager models are loaded and warmed up, the schedulers started, and the service built
around them. Images come back as base64, so the image store and URL signer are never used; they
exist because the service needs them.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from vary.imaging import ImageDecoder
from vary.service.gateway import Gateway
from vary.service.registry import ModelRegistry
from vary.service.variations import Links, VariationService
from vary.state.local_store import LocalImageStore
from vary.state.signing import UrlSigner


@contextlib.asynccontextmanager
async def running_service(
    registry: ModelRegistry, decoder: ImageDecoder, models: Sequence[str] = ()
) -> AsyncIterator[VariationService]:
    """The service over `registry`, its eager models and the local `models` warmed up (lazy ones too: a
    first request's time should not be a load's)."""
    engines = {id(engine): engine for engine in registry.to_warm_up()}
    for name in models:
        engine = registry.resolve(name).engine
        if engine is not None:
            engines[id(engine)] = engine
    for engine in engines.values():
        await run_in_threadpool(engine.warmup)
    started = []
    with tempfile.TemporaryDirectory(prefix="vary-eval-") as scratch:
        try:
            for model in registry.local:
                model.start()
                started.append(model)
            links = Links(UrlSigner(secrets.token_bytes(32)), ttl_seconds=3600)
            yield VariationService(registry, decoder, LocalImageStore(Path(scratch)), links, Gateway())
        finally:
            for model in started:
                await run_in_threadpool(model.close)
            for upstream in registry.hosted:
                await upstream.aclose()
