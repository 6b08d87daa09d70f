"""The admin API, for admin keys only (`vary keys create --admin`), even under --no-auth."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from vary.api.auth import require_admin_key
from vary.api.deps import services_of
from vary.api.errors import ApiError, invalid
from vary.ops.usage_report import parse_since, summarise
from vary.state.keys import KeyInfo

router = APIRouter(prefix="/v1/admin", include_in_schema=False)
AdminKey = Annotated[KeyInfo, Depends(require_admin_key)]


@router.get("/usage")
async def usage(
    request: Request, _: AdminKey, key: str | None = None, user: str | None = None, since: str | None = None
) -> dict[str, Any]:
    """Requests, images, failures and latency by key, user and model; the same as `vary usage`."""
    try:
        since_ts = parse_since(since) if since else None
    except ValueError as exc:
        raise invalid(str(exc), param="since") from None
    rows = await run_in_threadpool(services_of(request).db.usage_rows, key_id=key, user=user, since=since_ts)
    return {"object": "list", "data": [summary.__dict__ for summary in summarise(rows)]}


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


@router.patch("/keys/{key_id}")
async def update_key(request: Request, key_id: str, changes: KeyChanges, _: AdminKey) -> dict[str, Any]:
    """The same as `vary keys update KEY_ID --safety off|default`; the next request of the key sees it."""
    updated = await run_in_threadpool(services_of(request).db.set_key_safety, key_id, changes.safety)
    if updated is None:
        raise ApiError(404, "No such key.", param="key_id", code="key_not_found")
    return _key_card(updated)
