"""Caps request bodies as bytes arrive, so an oversized or endless upload is never buffered whole,
and a body that arrives too slowly (a slow-loris upload) is cut off with a 408."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vary.api.errors import ApiError


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, error: Callable[[int], ApiError], timeout_seconds: float = 60.0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.error = error
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            # Refused before reading a byte of it.
            await self.error(self.max_bytes).response()(scope, receive, send)
            return
        received = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_seconds

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # afterwards only http.disconnect can come, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise body_too_slow(self.timeout_seconds) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    # Raised inside whoever is reading the body; the error handlers answer it.
                    raise self.error(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def body_too_slow(seconds: float) -> ApiError:
    return ApiError(408, f"The request body did not arrive within {seconds:g} seconds.", code="request_timeout")
