"""Caps request bodies as bytes arrive, so an oversized or endless upload is never buffered whole."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vary.api.errors import ApiError


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, error: Callable[[int], ApiError]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.error = error

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

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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
