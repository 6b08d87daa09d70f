"""Bearer keys: `Authorization: Bearer vary-...`, checked against hashed keys in SQLite.

Azure OpenAI's clients send the key as `api-key: ...` instead; that header is read when there is no
Authorization header.
"""

from __future__ import annotations

from fastapi import Request

from vary.api.deps import services_of
from vary.api.errors import ApiError
from vary.state.keys import KeyInfo

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG_KEY = "Incorrect API key provided. Create a key with `vary keys create`."
NOT_ADMIN = "This API key is not an admin key. Admin endpoints need one: `vary keys create --admin`."


async def require_api_key(request: Request) -> KeyInfo | None:
    """The caller's key, or None when the server runs with --no-auth. Never echoes the key."""
    if services_of(request).settings.no_auth:
        return None
    return await _bearer_key(request)


async def require_admin_key(request: Request) -> KeyInfo:
    """An active admin key; checked even under --no-auth, which opens only the model API."""
    key = await _bearer_key(request)
    if not key.admin:
        raise ApiError(403, NOT_ADMIN, code="insufficient_permissions")
    return key


async def _bearer_key(request: Request) -> KeyInfo:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header and request.headers.get("api-key"):
        scheme, token = "bearer", request.headers["api-key"].strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, MISSING_KEY, code="invalid_api_key")
    # A database read per request, so a revoked key is refused at once, even by another process.
    services = services_of(request)
    key: KeyInfo | None = await services.db_calls.run("check an API key", services.db.authenticate, token)
    if key is None:
        raise ApiError(401, WRONG_KEY, code="invalid_api_key")
    return key
