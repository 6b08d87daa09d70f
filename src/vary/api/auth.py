"""API keys: `Authorization: Bearer vary-...`, or one of the key headers other clients send, checked against
hashed keys in the database.

Clients written for other OpenAI-compatible endpoints send the key in their own header: Azure OpenAI's
`api-key`, Obiguard's `x-obiguard-api-key`. The headers read (the `api_key_headers` setting) are tried in
order when there is no Authorization header, so such a program works with only its base URL changed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vary.api.deps import services_of
from vary.api.errors import ApiError
from vary.state.keys import KeyInfo

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
# Said to any client, so it names no path: whoever runs the server knows where it keeps its data, and
# `vary keys create` must be pointed there (the server's start prints the exact command).
WRONG_KEY = (
    "Incorrect API key provided. Keys are made on the server's machine with `vary keys create`, run with the "
    "same --data-dir (or VARY_DATA_DIR, or --database-url) as the server: its start prints that command."
)
NOT_ADMIN = "This API key is not an admin key. Admin endpoints need one: `vary keys create --admin`."


# Declares OpenAI's bearer scheme in the OpenAPI document, by OpenAI's name for it, so that /docs has an
# Authorize button and "Try it out" sends the key. It refuses nothing itself (the checks below answer, in
# OpenAI's words), and the other key headers still count.
BEARER = HTTPBearer(
    scheme_name="ApiKeyAuth",
    description="A vary key, `vary-...`: made with `vary keys create` on the server's machine.",
    auto_error=False,
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


async def require_api_key(request: Request, _: Bearer) -> KeyInfo | None:
    """The caller's key, or None when the server runs with --no-auth. Never echoes the key."""
    if services_of(request).settings.no_auth:
        return None
    return await _caller_key(request)


async def require_admin_key(request: Request, _: Bearer) -> KeyInfo:
    """An active admin key; checked even under --no-auth, which opens only the model API."""
    key = await _caller_key(request)
    if not key.admin:
        raise ApiError(403, NOT_ADMIN, code="insufficient_permissions")
    return key


def presented_key(request: Request, key_headers: tuple[str, ...]) -> str | None:
    """The key the request carries: a Bearer token, else the first of `key_headers` that is set."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None
    for name in key_headers:
        value = request.headers.get(name, "").strip()
        if value:
            return value
    return None


async def _caller_key(request: Request) -> KeyInfo:
    services = services_of(request)
    token = presented_key(request, services.settings.api_key_headers)
    if token is None:
        raise ApiError(401, MISSING_KEY, code="invalid_api_key")
    # A database read per request, so a revoked key is refused at once, even by another process.
    key: KeyInfo | None = await services.db_calls.run("check an API key", services.db.authenticate, token)
    if key is None:
        raise ApiError(401, WRONG_KEY, code="invalid_api_key")
    return key
