"""The admin API, for admin keys only (`vary keys create --admin`), even under --no-auth."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from vary.api.auth import require_admin_key
from vary.api.deps import services_of
from vary.api.errors import invalid
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
