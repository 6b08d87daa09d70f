"""The admin API, for admin keys only (`vary keys create --admin`), even under --no-auth."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from vary.api.auth import require_admin_key
from vary.api.deps import services_of
from vary.api.errors import invalid
from vary.ops.usage_report import parse_since, summary_of
from vary.state.keys import KeyInfo

router = APIRouter(prefix="/v1/admin", include_in_schema=False)
AdminKey = Annotated[KeyInfo, Depends(require_admin_key)]


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
    groups = await run_in_threadpool(
        services_of(request).db.usage_groups, key_id=key, user=user, since=since_ts, limit=limit + 1, offset=offset
    )
    data = [summary_of(group).__dict__ for group in groups[:limit]]
    return {"object": "list", "data": data, "has_more": len(groups) > limit}
