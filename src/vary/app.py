"""build_app(settings): the lifespan builds the store, database, engines and schedulers, then mounts routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from vary.api.admin_routes import router as admin_router
from vary.api.allowed_hosts import AllowedHostsMiddleware
from vary.api.body_limit import BodyLimitMiddleware
from vary.api.docs_pages import ASSETS_DIR as DOCS_ASSETS_DIR
from vary.api.docs_pages import ASSETS_PATH as DOCS_ASSETS_PATH
from vary.api.docs_pages import router as docs_router
from vary.api.errors import install_error_handlers
from vary.api.http_protocol import vary_http_protocol
from vary.api.ops_routes import router as ops_router
from vary.api.playground import WEB_DIR
from vary.api.playground import router as playground_router
from vary.api.readiness import ReadinessProbe
from vary.api.request_context import RequestContextMiddleware
from vary.api.routes import API_PREFIX, azure_router, router
from vary.api.security_headers import SecurityHeadersMiddleware
from vary.api.variation_form import request_too_large
from vary.engines.base import Engine
from vary.engines.diffusion import Placement
from vary.imaging import ImageDecoder
from vary.ops.memory import ReleaseMemoryWhenIdle
from vary.ops.metrics import Metrics
from vary.ops.traces import instrument
from vary.safety.checks import ContentChecks
from vary.safety.policy import SafetyPolicy
from vary.service.catalogue import Catalogue, catalogue_for
from vary.service.components import Services
from vary.service.gateway import Gateway
from vary.service.rate_limiter import RateLimiter
from vary.service.registry import ModelRegistry
from vary.service.variations import Links, VariationService
from vary.settings import Settings
from vary.state.connection import shown
from vary.state.database import Database
from vary.state.image_store import ImageStore, Presigner
from vary.state.signing import SigningSecrets, UrlSigner, secrets_for
from vary.state.stores import open_store
from vary.targets.local_model import LocalModel, QueuePolicy

log = logging.getLogger("vary")
# The database lease whose holder sweeps expired images.
SWEEP_LEASE = "image-sweeper"


def build_registry(
    settings: Settings,
    decoder: ImageDecoder,
    load_engines: Callable[[Settings], list[Engine]] | None = None,
    catalogue: Catalogue | None = None,
) -> ModelRegistry:
    """Every served model's targets, built but not loaded; local models decode their inputs with `decoder`.

    `catalogue` replaces the settings' (`vary eval` serves the several models it compares)."""
    queue = QueuePolicy.of(settings)

    def local_model(engine: Engine) -> LocalModel:
        return LocalModel(engine, decoder=decoder, queue=queue)

    safety = SafetyPolicy.of_settings(settings)
    if load_engines is not None:
        return ModelRegistry.of_engines(load_engines(settings), local=local_model, safety=safety)
    return ModelRegistry.from_catalogue(
        catalogue or catalogue_for(settings.catalogue, settings.model),
        placement=Placement(device=settings.device, dtype=settings.dtype, compile=settings.compile),
        overrides=settings.render_overrides(),
        local=local_model,
        safety=safety,
    )


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The HTTP protocol class uvicorn runs the app with: header deadline, size caps, send timeout."""
    return vary_http_protocol(
        settings.header_timeout_seconds,
        max_request_line_bytes=settings.max_request_line_bytes,
        max_header_bytes=settings.max_header_bytes,
        send_timeout_seconds=settings.send_timeout_seconds,
    )


def build_app(
    settings: Settings,
    *,
    load_engines: Callable[[Settings], list[Engine]] | None = None,
    registry: ModelRegistry | None = None,
    decoder: ImageDecoder | None = None,
    store: ImageStore | None = None,
    checks: ContentChecks | None = None,
) -> FastAPI:
    """`load_engines` replaces the catalogue (tests hand in engines they built); all of them load eagerly.

    `registry`: models already built and warmed up, with the `decoder` they were built with (`vary serve`
    loads them before uvicorn starts). Without one, the lifespan builds and warms them up.
    `store`: the image store, already opened and checked (`vary serve` does it before loading models).
    `checks`: the content classifiers, already loaded (`vary serve` loads them before the models, too).
    """
    inputs = decoder or ImageDecoder(settings.image_rules())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Opening the database upgrades its schema (vary/migrations) before anything is served.
        db = Database.open(
            settings.database,
            busy_timeout_seconds=settings.db_busy_timeout_seconds,
            statement_timeout_seconds=settings.db_statement_timeout_seconds,
            spool_path=settings.usage_spool_path,
            spool_max_rows=settings.usage_spool_max_rows,
        )
        log.info("database %s", shown(db.url))
        db.start_spool_writer()
        nonlocal store
        if store is None:
            store = await run_in_threadpool(open_store, settings)
        keys = secrets_for(settings, db)
        signer = UrlSigner(keys.current, [keys.previous] if keys.previous else [])
        nonlocal registry
        if registry is None:
            registry = await run_in_threadpool(build_registry, settings, inputs, load_engines)
            for engine in registry.to_warm_up():
                await run_in_threadpool(engine.warmup)
        metrics = Metrics(served=(model.id for model in registry.served()))
        metrics.watch(registry.local)
        spool = db.spool
        metrics.watch_spool(lambda: len(spool) if spool is not None else 0)
        gateway = Gateway(observer=metrics)
        nonlocal checks
        checks = checks or ContentChecks()
        checks.observer = metrics
        # At start: a missing classifier package or a changed model file stops the server, not a request.
        await run_in_threadpool(checks.load, (model.safety for model in registry.served()))
        metrics.watch_circuits(gateway.circuit_states)
        for model in registry.local:
            model.start(on_batch=functools.partial(metrics.observe_batch, model.name))
        app.state.services = Services(
            settings=settings,
            db=db,
            store=store,
            signer=signer,
            registry=registry,
            variations=VariationService(
                registry,
                inputs,
                store,
                Links(
                    signer,
                    settings.url_ttl_seconds,
                    settings.public_url,
                    # A store that presigns (S3) was checked to be one when storage_presign was set (open_store).
                    presigner=store if settings.storage_presign and isinstance(store, Presigner) else None,
                ),
                gateway,
                checks,
            ),
            limiter=RateLimiter(
                defaults=settings.key_limits(),
                quota_period=settings.quota_period,
                storage_uri=settings.rate_limit_storage,
            ),
            metrics=metrics,
            started_at=int(time.time()),
        )
        # One replica at a time sweeps a shared store: the holder of the database's sweep lease, which it
        # renews each round; when it stops, the lease runs out and another replica takes over.
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        lease_seconds = 3 * settings.sweep_interval_seconds
        sweeper = asyncio.create_task(
            _sweep_forever(store, settings, may_sweep=lambda: db.try_lease(SWEEP_LEASE, holder, lease_seconds))
        )
        # A rotation (`vary secret rotate`) reaches every running replica within a sweep interval.
        rereader = asyncio.create_task(_reread_secrets_forever(signer, lambda: secrets_for(settings, db), settings))
        log.info("serving %s", ", ".join(m.id for m in registry.served()))
        try:
            yield
        finally:
            sweeper.cancel()
            rereader.cancel()
            with contextlib.suppress(Exception):  # a lease not given back runs out on its own
                await run_in_threadpool(db.release_lease, SWEEP_LEASE, holder)
            for model in registry.local:
                await run_in_threadpool(model.close)
            for upstream in registry.hosted:
                await upstream.aclose()
            await checks.aclose()
            app.state.services.db_calls.close()
            db.close()

    app = FastAPI(
        title="vary",
        version="0.1.0",
        summary="OpenAI's image-variations API on open models.",
        lifespan=lifespan,
        docs_url=None,  # api/docs_pages.py serves /docs and /redoc with bundled files, not a CDN's
        redoc_url=None,
    )
    app.state.readiness = ReadinessProbe(settings.readyz_interval_seconds)
    install_error_handlers(app)
    app.include_router(router, prefix=API_PREFIX)
    app.include_router(router, include_in_schema=False)  # the same routes without /v1, for gateways' clients
    app.include_router(azure_router)
    app.include_router(ops_router)
    app.include_router(admin_router)
    app.include_router(playground_router)
    app.include_router(docs_router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        error=request_too_large(settings.image_rules()),
        timeout_seconds=settings.body_timeout_seconds,
    )
    app.add_middleware(ReleaseMemoryWhenIdle, quiet_seconds=settings.memory_release_after_seconds)
    if settings.allowed_hosts is not None:
        app.add_middleware(AllowedHostsMiddleware, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware)  # on every answer, refusals included
    # Outermost: every answer gets an id and a log line.
    app.add_middleware(RequestContextMiddleware, log_assets=settings.log_asset_requests)
    instrument(app)  # when traces are on, their server span wraps even that
    return app


async def _sweep_forever(store: ImageStore, settings: Settings, may_sweep: Callable[[], bool] = lambda: True) -> None:
    """Deletes expired images every sweep interval. `may_sweep` says whether this replica sweeps this round
    (one replica at a time, e.g. while it holds a lease in the shared database); it runs in the thread pool."""
    while True:
        try:
            if await run_in_threadpool(may_sweep):
                removed = await run_in_threadpool(store.sweep, ttl_seconds=settings.url_ttl_seconds)
                if removed:
                    log.info("swept %d expired images", removed)
        except Exception:  # noqa: BLE001 - a store or lease that fails this round must not end the sweeper
            log.exception("sweeping the image store failed")
        await asyncio.sleep(settings.sweep_interval_seconds)


async def _reread_secrets_forever(signer: UrlSigner, read: Callable[[], SigningSecrets], settings: Settings) -> None:
    """The signing secrets read again every sweep interval; one that cannot be read keeps the last ones."""
    while True:
        await asyncio.sleep(settings.sweep_interval_seconds)
        try:
            signer.use(await run_in_threadpool(read))
        except Exception:  # noqa: BLE001 - a database or file that fails this round must not end the task
            log.warning("reading the URL-signing secrets again failed; the last ones stay in use", exc_info=True)
