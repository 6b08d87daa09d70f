"""Everything a running vary holds, started and stopped in one place: the server's lifespan and `vary eval` both
run inside `running_services`.

In order: the database (its schema upgraded first) and its usage spool's writer, the image store,
the URL-signing secrets, the models (built, the eager ones loaded and warmed up, their schedulers
started), the gateway, the content checks, the rate limiter, then two background loops: the
sweeper of expired images (one replica at a time, by a database lease) and the re-reading of the
signing secrets. Leaving the context stops all of it, in the reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from starlette.concurrency import run_in_threadpool

from vary.engines.base import Engine
from vary.engines.diffusion import Placement
from vary.imaging import ImageDecoder
from vary.ops.metrics import Metrics
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

    `load_engines` replaces the catalogue (tests hand in engines they built); `catalogue` replaces the
    settings' (`vary eval` serves the several models it compares)."""
    queue = QueuePolicy.of(settings)

    def local_model(engine: Engine) -> LocalModel:
        return LocalModel(engine, decoder=decoder, queue=queue)

    safety = SafetyPolicy.of_settings(settings)
    if load_engines is not None:
        return ModelRegistry.of_engines(load_engines(settings), local=local_model, safety=safety)
    return ModelRegistry.from_catalogue(
        catalogue or catalogue_for(settings.catalogue, settings.model, settings.accept_license),
        placement=Placement(device=settings.device, dtype=settings.dtype, compile=settings.compile),
        overrides=settings.render_overrides(),
        local=local_model,
        safety=safety,
    )


@contextlib.asynccontextmanager
async def running_services(
    settings: Settings,
    *,
    decoder: ImageDecoder | None = None,
    registry: ModelRegistry | None = None,
    store: ImageStore | None = None,
    checks: ContentChecks | None = None,
    load_engines: Callable[[Settings], list[Engine]] | None = None,
    warm_up: Sequence[str] = (),
) -> AsyncIterator[Services]:
    """The running services, stopped when the block ends however it ends.

    Anything given is used as it is: `registry` with the `decoder` it was built with, its eager models
    already warmed up (`vary serve` loads them before uvicorn starts); `store` opened and checked; `checks`
    loaded. Without a registry, one is built from the settings (or `load_engines`) and its eager models are
    loaded and warmed up here. The local models `warm_up` names are too, lazy ones included (`vary eval`).
    """
    decoder = decoder or ImageDecoder(settings.image_rules())
    async with contextlib.AsyncExitStack() as stack:
        db = Database.open(
            settings.database,
            busy_timeout_seconds=settings.db_busy_timeout_seconds,
            statement_timeout_seconds=settings.db_statement_timeout_seconds,
            spool_path=settings.usage_spool_path,
            spool_max_rows=settings.usage_spool_max_rows,
        )
        stack.callback(db.close)
        log.info("database %s", shown(db.url))
        db.start_spool_writer()
        image_store = store if store is not None else await run_in_threadpool(open_store, settings)
        keys = secrets_for(settings, db)
        signer = UrlSigner(keys.current, [keys.previous] if keys.previous else [])
        if registry is None:
            registry = await run_in_threadpool(build_registry, settings, decoder, load_engines)
            await _warm_up(registry.to_warm_up())
        await _warm_up(registry.resolve(name).engine for name in warm_up)
        metrics = Metrics(served=(model.id for model in registry.served()))
        await stack.enter_async_context(_running_models(registry, metrics))
        gateway = Gateway(observer=metrics)
        metrics.watch_circuits(gateway.circuit_states)
        checks = checks or ContentChecks()
        checks.observer = metrics
        stack.push_async_callback(checks.aclose)
        # At start: a missing classifier package or a changed model file stops the server, not a request.
        await run_in_threadpool(checks.load, (model.safety for model in registry.served()))
        presigner = image_store if settings.storage_presign and isinstance(image_store, Presigner) else None
        links = Links(signer, settings.url_ttl_seconds, settings.public_url, presigner=presigner)
        services = Services(
            settings=settings,
            db=db,
            store=image_store,
            signer=signer,
            registry=registry,
            variations=VariationService(registry, decoder, image_store, links, gateway, checks),
            limiter=RateLimiter(
                defaults=settings.key_limits(),
                quota_period=settings.quota_period,
                storage_uri=settings.rate_limit_storage,
            ),
            metrics=metrics,
            started_at=int(time.time()),
        )
        stack.callback(services.db_calls.close)
        await stack.enter_async_context(_background_loops(services))
        log.info("serving %s", ", ".join(m.id for m in registry.served()))
        yield services


async def _warm_up(engines: Iterable[Engine | None]) -> None:
    """Each engine loaded and warmed up once (a model in two routes is one engine)."""
    for engine in {id(engine): engine for engine in engines if engine is not None}.values():
        await run_in_threadpool(engine.warmup)


@contextlib.asynccontextmanager
async def _running_models(registry: ModelRegistry, metrics: Metrics) -> AsyncIterator[None]:
    """The local models' schedulers started, and every target closed at the end, hosted providers included."""
    metrics.watch(registry.local)
    started: list[LocalModel] = []
    try:
        for model in registry.local:
            model.start(on_batch=functools.partial(metrics.observe_batch, model.name))
            started.append(model)
        yield
    finally:
        for model in started:
            await run_in_threadpool(model.close)
        for provider in registry.hosted:
            await provider.aclose()


@contextlib.asynccontextmanager
async def _background_loops(services: Services) -> AsyncIterator[None]:
    settings, db, store = services.settings, services.db, services.store
    spool = db.spool
    services.metrics.watch_spool(lambda: len(spool) if spool is not None else 0)
    # One replica at a time sweeps a shared store: the holder of the database's sweep lease, which it
    # renews each round; when it stops, the lease runs out and another replica takes over.
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    lease_seconds = 3 * settings.sweep_interval_seconds
    sweeper = asyncio.create_task(
        sweep_forever(store, settings, may_sweep=lambda: db.try_lease(SWEEP_LEASE, holder, lease_seconds))
    )
    # A rotation (`vary secret rotate`) reaches every running replica within a sweep interval.
    rereader = asyncio.create_task(
        _reread_secrets_forever(services.signer, lambda: secrets_for(settings, db), settings)
    )
    try:
        yield
    finally:
        sweeper.cancel()
        rereader.cancel()
        with contextlib.suppress(Exception):  # a lease not given back runs out on its own
            await run_in_threadpool(db.release_lease, SWEEP_LEASE, holder)


async def sweep_forever(store: ImageStore, settings: Settings, may_sweep: Callable[[], bool] = lambda: True) -> None:
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
