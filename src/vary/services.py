"""Everything a running server holds, built once by the app's lifespan and read by the HTTP edge."""

from __future__ import annotations

from dataclasses import dataclass

from vary.db import Database
from vary.engines.registry import ModelRegistry
from vary.metrics import Metrics
from vary.ratelimit import RateLimiter
from vary.serving import VariationService
from vary.settings import Settings
from vary.signing import UrlSigner
from vary.storage import ImageStore


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
