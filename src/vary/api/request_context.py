"""Every request gets an id and one structured log line.

The id is the client's `x-request-id` when it sends a sane one, else a fresh one; it goes back on
every response and into the usage row, so a client's report, the log and the database meet. The
log line (logger `vary.access`) has the method, the path without its query string (image URLs carry
their signature there), the status and the duration, plus what the route added with
`describe_request` (key id, user, model, n, size, timings), and the trace id when traces are on
(ops/traces.py), so a slow request's line leads to its trace.

A successful fetch of a static asset (the playground's CSS, JS and icons, the API docs' files) is
logged at debug level only, unless asked for: a page load would otherwise add a line per file and
scroll the ready block and its key out of sight.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from opentelemetry import trace
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vary.echo import clipped

log = logging.getLogger("vary.access")
HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_of(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def describe_request(request: Request, **fields: Any) -> None:
    """Adds fields to this request's log line."""
    request.scope.setdefault("state", {}).setdefault("log_fields", {}).update(fields)


# Paths of static assets (the playground's files, the favicon, the API docs' bundled files).
ASSET_PREFIXES = ("/static/", "/favicon.ico", "/docs-assets/", "/docs-redoc.js")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, log_assets: bool = False) -> None:
        self.app = app
        self.quiet_prefixes: tuple[str, ...] = () if log_assets else ASSET_PREFIXES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                message["headers"] = [*headers, (HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "path": clipped(scope["path"]),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                **{k: v for k, v in state.get("log_fields", {}).items() if v is not None},
            }
            span = trace.get_current_span().get_span_context()  # the server span, when one is recorded
            if span.is_valid and span.trace_flags.sampled:
                fields["trace_id"] = trace.format_trace_id(span.trace_id)
            quiet = status < 400 and scope["path"].startswith(self.quiet_prefixes)
            level = logging.DEBUG if quiet else logging.INFO
            log.log(level, "%s %s %d", scope["method"], fields["path"], status, extra=fields)


def _client_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == HEADER.encode():
            text = value.decode("latin-1")
            return text if _SANE_ID.fullmatch(text) else None
    return None
