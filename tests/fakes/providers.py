"""Real HTTP servers on loopback that speak the providers' contracts, with faults injected on demand.

- OpenAI's `POST /v1/images/variations` (Bearer key, multipart, b64_json or url answers),
- Azure OpenAI's `POST /openai/deployments/{deployment}/images/variations?api-version=...` (`api-key` header),
- OpenAI's `POST /v1/images/edits` for gpt-image (prompt, model; always b64_json, 1024x1024),
- and a TCP server that resets every connection.
A test queues faults per route ("openai", "azure", "edits", and "files" for the downloads of URL
answers); each request takes the next one: a status, a 429 with Retry-After in any of its forms, a
redirect, a plain-text error, a delay past the client's timeout, a hold until the test releases
it, malformed JSON, a body that trickles, or an answer of given bytes (an unreadable image, a
bomb, 48 MiB) in base64 or behind a URL. An Azure deployment the fake does not know answers 404
`DeploymentNotFound`, as Azure does.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tests.fakes.loopback import LoopbackFake
from vary.testing import free_port


@dataclass
class Call:
    route: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    fields: dict[str, str]
    image_size: tuple[int, int] | None
    images: list[tuple[str, tuple[int, int]]] = field(default_factory=list)  # (part name, size) per image part


@dataclass
class FakeProvider(LoopbackFake):
    key: str
    azure_key: str = ""
    deployments: tuple[str, ...] = ("vary-dalle", "flaky")
    faults: dict[str, deque[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(deque))
    calls: list[Call] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    downloads: int = 0  # GETs of answer URLs
    port: int = 0
    host: str = "127.0.0.1"  # another loopback address (127.0.0.2) stands in for a host on an internal network
    hosts_seen: list[str] = field(default_factory=list)  # the Host header of each GET of a file

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail(self, route: str, *faults: tuple[Any, ...]) -> None:
        self.faults[route].extend(faults)

    def calls_to(self, route: str) -> list[Call]:
        return [call for call in self.calls if call.route == route]

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/images/variations", self._openai, methods=["POST"]),
            Route("/openai/deployments/{deployment}/images/variations", self._azure, methods=["POST"]),
            Route("/v1/images/edits", self._edits, methods=["POST"]),
            Route("/files/{name}", self._file),
        ]

    # --- the contracts ------------------------------------------------------------------------

    async def _openai(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return _error(401, f"Incorrect API key provided: {request.headers.get('authorization', '')[-6:]}.")
        return await self._answer("openai", request, default_format="url")

    async def _azure(self, request: Request) -> Response:
        if request.headers.get("api-key") != (self.azure_key or self.key) or "authorization" in request.headers:
            return _error(401, "Access denied due to invalid subscription key.")
        if request.query_params.get("api-version") is None:
            return _error(404, "Resource not found")
        if request.path_params["deployment"] not in self.deployments:
            self.calls.append(
                Call("azure", request.url.path, dict(request.query_params), dict(request.headers), {}, None)
            )
            message = "The API deployment for this resource does not exist."
            return _error(404, message, code="DeploymentNotFound")
        return await self._answer("azure", request, default_format="url")

    async def _edits(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return _error(401, "Incorrect API key provided.")
        return await self._answer("edits", request, default_format="b64_json", fixed_size=1024)

    async def _file(self, request: Request) -> Response:
        self.downloads += 1
        self.hosts_seen.append(request.headers.get("host", ""))
        if self.faults["files"]:
            fault = self.faults["files"].popleft()
            if fault[0] == "status":
                return Response(status_code=fault[1])
            if fault[0] == "redirect":  # status, location
                return RedirectResponse(fault[2], status_code=fault[1])
        data = self.files.get(request.path_params["name"])
        return Response(data, media_type="image/png") if data else Response(status_code=404)

    async def _answer(
        self, route: str, request: Request, *, default_format: str, fixed_size: int | None = None
    ) -> Response:
        form = await request.form()
        image = form.get("image")
        size = None
        if image is not None and not isinstance(image, str):
            size = Image.open(io.BytesIO(await image.read())).size
        images = []
        for name, value in form.multi_items():
            if name in ("image", "image[]") and not isinstance(value, str):
                await value.seek(0)
                images.append((name, Image.open(io.BytesIO(await value.read())).size))
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        self.calls.append(
            Call(route, request.url.path, dict(request.query_params), dict(request.headers), fields, size, images)
        )
        if self.faults[route]:
            fault = self.faults[route].popleft()
            kind = fault[0]
            if kind == "status":
                return _error(fault[1], fault[2] if len(fault) > 2 else "The server had an error.")
            if kind == "429":
                return _error(429, "Rate limit reached for images per min.", headers={"Retry-After": str(fault[1])})
            if kind == "429-date":  # Retry-After as an HTTP-date, fault[1] seconds from now
                when = formatdate(time.time() + fault[1], usegmt=True)
                return _error(429, "Rate limit reached.", headers={"Retry-After": when})
            if kind == "429-ms":  # OpenAI's retry-after-ms, next to a Retry-After in seconds
                headers = {"retry-after-ms": str(fault[1]), "Retry-After": str(fault[2])}
                return _error(429, "Rate limit reached.", headers=headers)
            if kind == "error":  # status, message, code
                return _error(fault[1], fault[2], code=fault[3])
            if kind == "text":  # a plain-text error body
                return PlainTextResponse(fault[2], status_code=fault[1])
            if kind == "redirect":
                return RedirectResponse(fault[2], status_code=fault[1])
            if kind == "hold":  # until the test sets the event
                await asyncio.to_thread(fault[1].wait, 60)
            if kind == "b64":  # these bytes as every image, in base64
                items = [{"b64_json": base64.b64encode(fault[1]).decode()} for _ in range(int(fields.get("n", "1")))]
                return JSONResponse({"created": int(time.time()), "data": items})
            if kind == "url":  # these bytes behind a URL
                self.files[f"given-{len(self.calls)}.png"] = fault[1]
                items = [{"url": f"{self.base_url}/files/given-{len(self.calls)}.png"}]
                return JSONResponse({"created": int(time.time()), "data": items})
            if kind == "urls":  # these strings as the answer's urls, whatever they are
                return JSONResponse({"created": int(time.time()), "data": [{"url": url} for url in fault[1]]})
            if kind == "delay":
                await asyncio.sleep(fault[1])
            if kind == "malformed":
                return Response(b'{"created": 1, "data": [', media_type="application/json")
            if kind == "trickle":
                return StreamingResponse(_trickle(fault[1]), media_type="application/json")
        n = int(fields.get("n", "1"))
        side = fixed_size or int(fields.get("size", "1024x1024").split("x")[0])
        response_format = "b64_json" if fixed_size else fields.get("response_format", default_format)
        items = []
        for k in range(n):
            png = _png(side, k)
            if response_format == "b64_json":
                items.append({"b64_json": base64.b64encode(png).decode()})
            else:
                name = f"{route}-{len(self.calls)}-{k}.png"
                self.files[name] = png
                items.append({"url": f"{self.base_url}/files/{name}"})
        return JSONResponse({"created": int(time.time()), "data": items})


def _error(status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _trickle(seconds: float) -> AsyncIterator[bytes]:
    yield b'{"created": 1, '
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        yield b" "


def _png(side: int, k: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40 * k % 256, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


class ResetServer:
    """Accepts a connection, reads a little, and resets it (RST): a connection that dies mid-request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self._socket = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.accepted += 1
            connection.recv(1024)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    def stop(self) -> None:
        self._socket.close()
