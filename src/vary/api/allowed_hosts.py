"""VARY_ALLOWED_HOSTS: the Host header values the server answers; any other gets a 400 in OpenAI's shape.

Image URLs are built from the request's own base URL unless VARY_PUBLIC_URL is set: behind a proxy that
passes the client's Host on, a client could otherwise have vary hand out links to a host of its choosing
(and a page on another origin could reach a server on loopback through DNS rebinding). An operator sets
one of the two. /healthz answers whatever the Host: load balancers and orchestrators probe by address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from vary.api.errors import ApiError

ANY_HOST_PATHS = frozenset({"/healthz"})


# A Host header as RFC 9110 has it: a name or an IPv4 address, or a bracketed IPv6 address, then an optional
# ":" and digits. Anything else (a second colon, "@", an unclosed bracket, a port that is not digits) is no host.
_HOST_HEADER = re.compile(r"(?P<host>[a-z0-9._~!$&'()*+,;=%-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def host_of(header: str) -> str | None:
    """The host of a Host header, lower case, without its port ("[::1]:8000" is "[::1]"); None when the header is
    not a host and an optional port (so "evil.example:80:a.vary.example" never meets "*.vary.example")."""
    match = _HOST_HEADER.fullmatch(header.strip().lower())
    return match["host"] if match else None


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


class AllowedHostsMiddleware:
    def __init__(self, app: ASGIApp, *, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ANY_HOST_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), "")
        host = host_of(header)
        if host is None or not host_allowed(host, self.allowed):
            error = ApiError(
                400, "Invalid Host header: this server does not answer for that host.", code="invalid_host"
            )
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
