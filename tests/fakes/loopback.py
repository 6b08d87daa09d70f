"""What every fake HTTP service here runs on: its ASGI app served by uvicorn in a daemon thread, on a free
loopback port, started within a bound and stopped by the test. `LoopbackFake` is a fake of a provider's
API: its `routes()` served by `start()` (or `with`), until `stop()`."""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from vary.testing import free_port

START_S = 30.0
Fake = TypeVar("Fake", bound="LoopbackFake")


class LoopbackServer:
    """`app` served on `host` (another loopback address, 127.0.0.2, stands in for a host on an internal network)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host, self.port = host, port or free_port()
        options = {"log_level": "warning", "lifespan": "off", **config}
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, **options))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_S
        while not self._server.started:
            assert time.monotonic() < deadline, f"the fake on {self.base_url} did not start"
            self._thread.join(0.02)  # start-up poll, bounded by the deadline

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, wait: float = 0.0) -> None:
        """Asks uvicorn to exit; waits up to `wait` seconds for it to have done so."""
        self._server.should_exit = True
        if wait:
            self._thread.join(wait)


class LoopbackFake:
    """A fake of a provider's HTTP API on loopback; its host may be another loopback address."""

    host = "127.0.0.1"
    port = 0
    _server: LoopbackServer | None = None

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def start(self: Fake) -> Fake:
        self._server = LoopbackServer(Starlette(routes=self.routes()), self.host)
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def __enter__(self: Fake) -> Fake:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
