"""Typed access to the running server's services from a request."""

from __future__ import annotations

from starlette.requests import Request

from vary.service.components import Services


def services_of(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError("the app's lifespan has not built its services yet")
    return services


def services_if_started(request: Request) -> Services | None:
    services = getattr(request.app.state, "services", None)
    return services if isinstance(services, Services) else None
