"""What the fakes of job-taking providers share (fal, Replicate, Black Forest Labs): a real HTTP server on a
loopback address, plain or TLS (a test CA from trustme, for official clients that only speak https), the
result files it serves in place of the provider's delivery host, and faults a test queues.

Faults are tuples queued per route ("submit", "status", "files", ...) or per seed (the calls of a split
request arrive in any order, so a test aims a fault at one call by its seed); each request or job takes
the next one. Result images are solid squares whose colour says the seed and the image's place in its
call, so a test can tell which call made which image.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from vary.testing import free_port

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


def picture(side: int, seed: int, k: int, fmt: str = "png") -> bytes:
    """A solid square: red is the seed's low byte, green the image's place in its call."""
    buffer = io.BytesIO()
    pillow_format = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    Image.new("RGB", (side, side), (seed % 256, 40 * k % 256, 90)).save(buffer, format=pillow_format)
    return buffer.getvalue()


def colour_of(png: bytes) -> tuple[int, int, int]:
    """The colour of a result's centre pixel (what `picture` painted, give or take a lossy format's error)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    red, green, blue = image.getpixel((image.width // 2, image.height // 2))  # type: ignore[misc]
    return int(red), int(green), int(blue)


@dataclass
class JobServer:
    """A fake provider's server: its routes come from the subclass, the result files from here."""

    key: str
    host: str = "127.0.0.1"
    ca: trustme.CA | None = None  # serve https with a certificate this CA signed
    faults: dict[str, deque[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(deque))
    seed_faults: dict[int, deque[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(deque))
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (data, media type)
    downloads: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None
    _certs: Path | None = None

    # --- life -------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}:{self.port}"

    def start(self, certs: Path | None = None) -> JobServer:
        self.port = free_port()
        app = Starlette(routes=[*self.routes(), Route("/files/{name}", self._file, methods=["GET"])])
        tls: dict[str, Any] = {}
        if self.ca is not None:
            assert certs is not None, "an https fake needs a directory for its certificate"
            cert = self.ca.issue_cert(self.host, "localhost")
            cert.private_key_and_cert_chain_pem.write_to_path(str(certs / "server.pem"))
            tls = {"ssl_certfile": str(certs / "server.pem")}
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off", **tls)
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the fake provider did not start"
            time.sleep(0.02)  # start-up poll, bounded
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    # --- faults -----------------------------------------------------------------------------------

    def fail(self, route: str, *faults: tuple[Any, ...]) -> None:
        self.faults[route].extend(faults)

    def fail_seed(self, seed: int, *faults: tuple[Any, ...]) -> None:
        self.seed_faults[seed].extend(faults)

    def next_fault(self, route: str) -> tuple[Any, ...]:
        queue = self.faults[route]
        return queue.popleft() if queue else ("none",)

    def job_fault(self, seed: int) -> tuple[Any, ...]:
        """A job's fault: the next one queued for any job, else the next one aimed at its seed."""
        if self.faults["job"]:
            return self.faults["job"].popleft()
        queue = self.seed_faults.get(seed)
        return queue.popleft() if queue else ("none",)

    # --- results ----------------------------------------------------------------------------------

    def result_url(self, data: bytes, fmt: str, request: Request, *, host: JobServer | None = None) -> str:
        """A result stored here, or on `host` (another server standing in for a CDN), and its URL."""
        name = f"{secrets.token_hex(8)}.{fmt}"
        server = host or self
        server.files[name] = (data, MEDIA_TYPES[fmt])
        base = host.base_url if host is not None else str(request.base_url).rstrip("/")
        return f"{base}/files/{name}"

    def check_file(self, request: Request) -> Response | None:
        """A subclass's own rule for its result URLs (a signature, an expiry), checked before a file is served."""
        return None

    async def _file(self, request: Request) -> Response:
        self.downloads += 1
        fault = self.next_fault("files")
        if fault[0] == "status":
            return Response(status_code=fault[1])
        if fault[0] == "redirect":
            return RedirectResponse(fault[1], status_code=302)
        if fault[0] == "hold":  # until the test sets the event
            await asyncio.to_thread(fault[1].wait, 60)
        refused = self.check_file(request)
        if refused is not None:
            return refused
        entry = self.files.get(request.path_params["name"])
        if entry is None:
            return Response(status_code=404)
        data, media_type = entry
        if fault[0] == "bytes":  # these bytes in place of the image
            data = fault[1]
        return Response(data, media_type=media_type)
