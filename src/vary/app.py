"""build_app(settings): the lifespan builds the store, database, engines and schedulers, then mounts routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from vary.api.admin_routes import router as admin_router
from vary.api.body_limit import BodyLimitMiddleware
from vary.api.errors import install_error_handlers
from vary.api.ops_routes import router as ops_router
from vary.api.playground import WEB_DIR
from vary.api.playground import router as playground_router
from vary.api.request_context import RequestContextMiddleware
from vary.api.routes import router
from vary.api.variation_form import request_too_large
from vary.config import catalogue_for
from vary.db import Database
from vary.engines.base import Engine
from vary.engines.diffusion import Placement
from vary.engines.registry import ModelRegistry
from vary.memory import ReleaseMemoryWhenIdle
from vary.metrics import Metrics
from vary.ratelimit import Limits, RateLimiter
from vary.scheduler import Scheduler
from vary.serving import VariationService
from vary.settings import Settings
from vary.signing import UrlSigner, load_or_create_secret
from vary.storage import ImageStore

log = logging.getLogger("vary")


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ImageStore
    signer: UrlSigner
    registry: ModelRegistry
    schedulers: dict[str, Scheduler]
    variations: VariationService
    limiter: RateLimiter
    metrics: Metrics
    started_at: int


def build_app(
    settings: Settings,
    *,
    load_engines: Callable[[Settings], list[Engine]] | None = None,
    registry: ModelRegistry | None = None,
) -> FastAPI:
    """`load_engines` replaces the catalogue (tests hand in engines they built); all of them load eagerly.
    `registry`: models already built and warmed up (`vary serve` loads them before uvicorn starts)."""

    def build_registry() -> ModelRegistry:
        if load_engines is not None:
            return ModelRegistry(load_engines(settings))
        return ModelRegistry.from_catalogue(
            catalogue_for(settings.config, settings.model),
            placement=Placement(device=settings.device, dtype=settings.dtype, compile=settings.compile),
            overrides=settings.render_overrides(),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.db_path)
        store = ImageStore(settings.images_dir)
        signer = UrlSigner(load_or_create_secret(settings.secret_path))
        nonlocal registry
        if registry is None:
            registry = await run_in_threadpool(build_registry)
            for engine in registry.to_warm_up():
                await run_in_threadpool(engine.warmup)
        metrics = Metrics()
        schedulers = {
            e.info.id: Scheduler(
                e,
                max_queue=settings.queue_size,
                max_batch_images=settings.max_batch_images,
                retry_after_seconds=settings.retry_after_seconds,
                on_batch=functools.partial(metrics.observe_batch, e.info.id),
            )
            for e in registry.engines()
        }
        metrics.watch({e.info.id: e for e in registry.engines()}, schedulers)
        for scheduler in schedulers.values():
            scheduler.start()
        app.state.services = Services(
            settings=settings,
            db=db,
            store=store,
            signer=signer,
            registry=registry,
            schedulers=schedulers,
            variations=VariationService(settings, registry, schedulers, store, signer),
            limiter=RateLimiter(
                defaults=Limits(
                    requests_per_minute=settings.key_requests_per_minute,
                    images_per_minute=settings.key_images_per_minute,
                    max_concurrent=settings.key_max_concurrent,
                    image_quota=settings.key_image_quota,
                ),
                quota_period=settings.quota_period,
                storage_uri=settings.rate_limit_storage,
            ),
            metrics=metrics,
            started_at=int(time.time()),
        )
        sweeper = asyncio.create_task(_sweep_forever(store, settings))
        log.info("serving %s", ", ".join(m.id for m in registry.served()))
        try:
            yield
        finally:
            sweeper.cancel()
            for scheduler in schedulers.values():
                await run_in_threadpool(scheduler.close)
            for upstream in registry.upstreams():
                await upstream.aclose()
            db.close()

    app = FastAPI(
        title="vary",
        version="0.1.0",
        summary="OpenAI's image-variations API on open models.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(ops_router)
    app.include_router(admin_router)
    app.include_router(playground_router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        error=request_too_large,
        timeout_seconds=settings.body_timeout_seconds,
    )
    app.add_middleware(ReleaseMemoryWhenIdle, quiet_seconds=settings.memory_release_after_seconds)
    app.add_middleware(RequestContextMiddleware)  # outermost: every answer gets an id and a log line
    return app


async def _sweep_forever(store: ImageStore, settings: Settings) -> None:
    while True:
        try:
            removed = await run_in_threadpool(store.sweep, ttl_seconds=settings.url_ttl_seconds)
            if removed:
                log.info("swept %d expired files", removed)
        except OSError:
            log.exception("sweeping the image store failed")
        await asyncio.sleep(settings.sweep_interval_seconds)
