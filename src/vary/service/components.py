"""Everything a running server holds, built once by the app's lifespan and read by the HTTP edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from vary.ops.metrics import Metrics
from vary.service.rate_limiter import RateLimiter
from vary.service.registry import ModelRegistry
from vary.service.variations import VariationService
from vary.settings import Settings
from vary.state.bounded_calls import BoundedCalls
from vary.state.database import Database
from vary.state.image_store import ImageStore
from vary.state.signing import UrlSigner


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    store: ImageStore
    signer: UrlSigner
    registry: ModelRegistry
    variations: VariationService
    limiter: RateLimiter
    metrics: Metrics
    started_at: int
    # The database calls a request waits on, bounded in time on threads of their own.
    db_calls: BoundedCalls = field(default_factory=BoundedCalls)
