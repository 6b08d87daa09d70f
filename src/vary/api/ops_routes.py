"""Routes for operators, without auth: liveness, readiness, and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from vary.api.deps import services_if_started, services_of

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when every eagerly loaded model is loaded, and the image store and the database take writes."""
    services = services_if_started(request)
    if services is None:  # still starting
        return JSONResponse({"status": "starting"}, status_code=503)
    models = {
        model.id: "loaded" if model.loaded else ("loading" if model.eager else "lazy")
        for model in services.registry.models()
    }
    store = await run_in_threadpool(_check, services.store.check_writable)
    database = await run_in_threadpool(_check, services.db.check_writable)
    ready = store == "ok" and database == "ok" and "loading" not in models.values()
    body = {
        "status": "ready" if ready else "not ready",
        "models": models,
        "store": store,
        "database": database,
        # Usage rows waiting for the database (usage_spool.py); they are written once it takes writes.
        "usage_spooled": len(services.db.spool) if services.db.spool is not None else 0,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - the kind of failure is the answer; details stay in the log
        return f"failing: {type(exc).__name__}"
    return "ok"


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
