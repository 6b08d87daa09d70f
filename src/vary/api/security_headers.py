"""Headers that tell a browser how little to trust vary's pages with: on every answer.

The playground keeps an API key in the browser, on vary's origin, so its pages (and the API docs) run
only vary's own scripts (no inline script, no CDN), talk only to vary (`connect-src 'self'`), and are
never framed (`frame-ancestors 'none'`, clickjacking). Result images may come from a provider's or a
store's own URLs, so images are the one thing loaded from elsewhere. The API docs' two pages alone may use
inline styles and a blob worker, which Swagger UI and ReDoc need. No Referer leaves a page: image
URLs carry their signatures in the query string.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob: https: http:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# The API docs' pages only: Swagger UI and ReDoc set style attributes and inject style elements (styles cannot
# run code), and ReDoc parses the schema in a worker it makes from a blob.
DOCS_CONTENT_SECURITY_POLICY = (
    CONTENT_SECURITY_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
    + "; worker-src 'self' blob:"
)
DOCS_PAGES = frozenset({"/docs", "/redoc"})
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        policy = DOCS_CONTENT_SECURITY_POLICY if path in DOCS_PAGES else CONTENT_SECURITY_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {"Content-Security-Policy": policy, **SECURITY_HEADERS}.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
