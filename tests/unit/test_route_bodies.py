"""Every route checks the key before the body: no route lets FastAPI read a body for it.

FastAPI reads and parses a route's declared body (a pydantic parameter, Form or File fields) before it runs
any of the route's dependencies, the key check included. So no route of vary's declares one: the variation
routes read their multipart form themselves after admission, the admin routes their JSON after the admin key
(tests/robustness/test_limits_before_body.py sends the 20 MiB bodies from outside).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from vary.app import build_app
from vary.settings import Settings


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, within included routers too (FastAPI may keep an included router as one entry)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None) or route
        if included is not route or hasattr(route, "routes"):
            yield from api_routes(getattr(included, "routes", ()))


def test_no_route_has_a_body_that_fastapi_reads_before_the_key(tmp_path: Path) -> None:
    app = build_app(Settings(data_dir=tmp_path))
    routes = list(api_routes(app.routes))
    assert any(route.path == "/v1/admin/keys/{key_id}" for route in routes)
    with_bodies = [f"{sorted(route.methods)} {route.path}" for route in routes if route.body_field is not None]
    assert with_bodies == []
