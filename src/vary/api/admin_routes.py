"""The admin API, for admin keys only (`vary keys create --admin`), even under --no-auth.

No route here declares a body parameter: FastAPI reads and parses a declared body before it runs any
dependency, the key check included, so an unauthenticated client could make vary read ~20 MiB. A route
reads its body itself, after the key (`json_body`), and a small one: an admin's changes are a few fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from vary.api.auth import require_admin_key
from vary.api.deps import services_of
from vary.api.errors import ApiError, invalid, validation_error
from vary.ops.usage_report import parse_since, summary_of
from vary.state.keys import KeyInfo

router = APIRouter(prefix="/v1/admin", include_in_schema=False)
AdminKey = Annotated[KeyInfo, Depends(require_admin_key)]
# An admin request's JSON body, at most: a few fields.
MAX_ADMIN_BODY_BYTES = 64 * 1024
M = TypeVar("M", bound=BaseModel)


# Groups (key, user, model) per page, by default and at most.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


@router.get("/usage")
async def usage(
    request: Request,
    _: AdminKey,
    key: str | None = None,
    user: str | None = None,
    since: str | None = None,
    limit: int = DEFAULT_PAGE,
    offset: int = 0,
) -> dict[str, Any]:
    """Requests, images, failures and latency by key, user and model; the same as `vary usage`, a page at a time.

    The database sums the rows up, in the thread pool: however many rows there are, neither they nor the
    work on them reach the event loop. `has_more`: the next page starts at offset + limit.
    """
    try:
        since_ts = parse_since(since) if since else None
    except ValueError as exc:
        raise invalid(str(exc), param="since") from None
    if not 1 <= limit <= MAX_PAGE:
        raise invalid(f"limit must be from 1 to {MAX_PAGE}.", param="limit")
    if offset < 0:
        raise invalid("offset must be 0 or more.", param="offset")
    services = services_of(request)
    groups = await services.db_calls.run(
        "read usage", services.db.usage_groups, key_id=key, user=user, since=since_ts, limit=limit + 1, offset=offset
    )
    data = [summary_of(group).__dict__ for group in groups[:limit]]
    return {"object": "list", "data": data, "has_more": len(groups) > limit}


class KeyChanges(BaseModel):
    """What an admin may change on a key here: `safety` "off" skips the content checks for it (a trusted
    internal key); null puts the models' policies back."""

    model_config = ConfigDict(extra="forbid")
    safety: Literal["off"] | None


def _key_card(key: KeyInfo) -> dict[str, Any]:
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "admin": key.admin,
        "safety": key.safety,
    }


@router.get("/keys")
async def list_keys(request: Request, _: AdminKey) -> dict[str, Any]:
    """The keys, never the keys themselves: ids, names, roles and their content-policy override."""
    keys = await run_in_threadpool(services_of(request).db.list_keys)
    return {"object": "list", "data": [_key_card(key) for key in keys]}


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`, read once the key is checked (a route's dependency), and refused past
    MAX_ADMIN_BODY_BYTES as it arrives; a 400 in OpenAI's shape when it does not fit the model."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_ADMIN_BODY_BYTES:
            raise ApiError(413, f"Request body is larger than {MAX_ADMIN_BODY_BYTES} bytes.")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


@router.patch("/keys/{key_id}")
async def update_key(request: Request, key_id: str, _: AdminKey) -> dict[str, Any]:
    """The same as `vary keys update KEY_ID --safety off|default`; the next request of the key sees it."""
    changes = await json_body(request, KeyChanges)
    updated = await run_in_threadpool(services_of(request).db.set_key_safety, key_id, changes.safety)
    if updated is None:
        raise ApiError(404, "No such key.", param="key_id", code="key_not_found")
    return _key_card(updated)
