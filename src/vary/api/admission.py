"""The limits step of a variation request: the caller's key against its rate limits and quota, in two steps.

What the key alone decides (the requests window, the concurrency, a quota used up) is checked before the
request's body is read, so a key over its limits cannot make vary read 15 MB per request; the images
window and the quota for n images follow once the form says n.
"""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool

from vary.service.components import Services
from vary.service.rate_limiter import ANONYMOUS, Admission, quota_period_start
from vary.state.keys import KeyInfo


async def admit_request(services: Services, key: KeyInfo | None) -> Admission:
    """Admits the request (its images not known yet) or raises a 429; released when the request ends."""
    limiter = services.limiter
    limits = limiter.limits_for(key.limits if key else None)
    delivered = await _delivered(services, key)
    # Off the event loop: with a redis:// storage the windows are network calls.
    admission: Admission = await run_in_threadpool(
        limiter.admit_request, key.id if key else ANONYMOUS, limits, delivered=delivered
    )
    return admission


async def admit_images(services: Services, key: KeyInfo | None, admission: Admission, images: int) -> None:
    """The request's `images` against the images window and the quota, or a 429."""
    limiter = services.limiter
    limits = limiter.limits_for(key.limits if key else None)
    delivered = await _delivered(services, key)
    await run_in_threadpool(limiter.admit_images, admission, limits, images, delivered=delivered)


async def _delivered(services: Services, key: KeyInfo | None) -> int:
    """The images the key's quota has counted so far this period (0 without a quota)."""
    limits = services.limiter.limits_for(key.limits if key else None)
    if limits.image_quota is None or key is None:
        return 0
    since = quota_period_start(time.time(), services.limiter.quota_period)
    delivered: int = await services.db_calls.run("count a quota", services.db.images_delivered, key.id, since)
    return delivered
