"""build_app(settings): the HTTP edge mounted over the running services (service/runtime.py), which its lifespan
starts and stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from vary.api.admin_routes import router as admin_router
from vary.api.allowed_hosts import AllowedHostsMiddleware
from vary.api.body_limit import BodyLimitMiddleware
from vary.api.docs_pages import ASSETS_DIR as DOCS_ASSETS_DIR
from vary.api.docs_pages import ASSETS_PATH as DOCS_ASSETS_PATH
from vary.api.docs_pages import router as docs_router
from vary.api.errors import install_error_handlers
from vary.api.http_protocol import HttpLimits, VaryHttpProtocol
from vary.api.ops_routes import router as ops_router
from vary.api.playground import WEB_DIR
from vary.api.playground import router as playground_router
from vary.api.readiness import ReadinessProbe
from vary.api.request_context import RequestContextMiddleware
from vary.api.routes import API_PREFIX, azure_router, router
from vary.api.security_headers import SecurityHeadersMiddleware
from vary.api.shutdown import AnswerWhenStoppedMiddleware
from vary.api.variation_form import request_too_large
from vary.engines.base import Engine
from vary.imaging import ImageDecoder
from vary.ops.memory import ReleaseMemoryWhenIdle
from vary.ops.traces import instrument
from vary.safety.checks import ContentChecks
from vary.service.registry import ModelRegistry
from vary.service.runtime import running_services
from vary.settings import Settings
from vary.state.image_store import ImageStore


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The HTTP protocol class uvicorn runs the app with: header deadline, size caps, send timeout."""
    limits = HttpLimits(
        header_timeout_seconds=settings.header_timeout_seconds,
        max_request_line_bytes=settings.max_request_line_bytes,
        max_header_bytes=settings.max_header_bytes,
        send_timeout_seconds=settings.send_timeout_seconds,
    )
    return VaryHttpProtocol.with_limits(limits)


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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(
            settings, decoder=decoder, registry=registry, store=store, checks=checks, load_engines=load_engines
        ) as services:
            app.state.services = services
            yield

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
    app.add_middleware(AnswerWhenStoppedMiddleware)  # a request the server stops with gets its 503
    app.add_middleware(SecurityHeadersMiddleware)  # on every answer, refusals included
    # Outermost: every answer gets an id and a log line.
    app.add_middleware(RequestContextMiddleware, log_assets=settings.log_asset_requests)
    instrument(app)  # when traces are on, their server span wraps even that
    return app
