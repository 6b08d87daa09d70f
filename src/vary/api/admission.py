"""The limits step of a variation request: the caller's key against its rate limits and quota."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool

from vary.service.components import Services
from vary.service.rate_limiter import ANONYMOUS, Admission, quota_period_start
from vary.state.keys import KeyInfo


async def admit(services: Services, key: KeyInfo | None, images: int) -> Admission:
    """Admits the request or raises a 429; the caller releases the admission when the request ends."""
    limiter = services.limiter
    limits = limiter.limits_for(key.limits if key else None)
    delivered = 0
    if limits.image_quota is not None and key is not None:
        since = quota_period_start(time.time(), limiter.quota_period)
        delivered = await run_in_threadpool(services.db.images_delivered, key.id, since)
    # Off the event loop: with a redis:// storage the windows are network calls.
    admission: Admission = await run_in_threadpool(
        limiter.admit, key.id if key else ANONYMOUS, limits, images, delivered=delivered
    )
    return admission
