"""Routes for operators, without auth: liveness, readiness, and Prometheus metrics.

/readyz and /metrics belong on a private network (docs/security.md): they say what is served and how.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from vary.api.deps import services_if_started, services_of
from vary.api.readiness import ReadinessProbe

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when every eagerly loaded model is loaded, and the image store and the database take writes;
    never once draining (SIGTERM), so that load balancers stop sending here before the server stops."""
    if readiness_of(request).draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Cache-Control": "no-store"})
    services = services_if_started(request)
    if services is None:  # still starting
        return JSONResponse({"status": "starting"}, status_code=503)
    models = {
        model.id: "loaded" if model.loaded else ("loading" if model.eager else "lazy")
        for model in services.registry.models()
    }
    probe = await readiness_of(request).latest(services)
    ready = probe.store == "ok" and probe.database == "ok" and "loading" not in models.values()
    body = {
        "status": "ready" if ready else "not ready",
        "models": models,
        "store": probe.store,
        "database": probe.database,
        # Usage rows waiting for the database (usage_spool.py); they are written once it takes writes.
        "usage_spooled": len(services.db.spool) if services.db.spool is not None else 0,
    }
    # Age: how old the store's and database's answers are (probed at most every VARY_READYZ_INTERVAL_SECONDS).
    age = str(int(time.monotonic() - probe.at))
    return JSONResponse(body, status_code=200 if ready else 503, headers={"Age": age, "Cache-Control": "no-store"})


def readiness_of(request: Request) -> ReadinessProbe:
    probe = getattr(request.app.state, "readiness", None)
    if not isinstance(probe, ReadinessProbe):  # an app built without one: probe every time
        probe = request.app.state.readiness = ReadinessProbe(0.0)
    return probe


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
