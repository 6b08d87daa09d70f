"""A request still running when the server stops gets OpenAI's JSON: a 503 with Retry-After, never a plain 500.

The server stops a request by cancelling its task (cli/stopping.py does it when the graceful wait runs out,
or at a second Ctrl-C; a client that leaves is noticed otherwise, api/cancellation.py). The cancellation
reaches the route, which gives up its work and records the request; here it becomes the answer, in the
request's own log line, rather than a traceback of the cancellation.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vary import errors as domain
from vary.api.errors import api_error


class AnswerWhenStoppedMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cancellation is answered here, and goes no further
            if not started:  # else the answer is cut short, as the connection closes
                await api_error(domain.ShuttingDown()).response()(scope, receive, send)
