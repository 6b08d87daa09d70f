"""Per-key limits, declared once (LIMITS): the settings' defaults, the database's columns, the CLI's flags and
messages, and the limiter's checks all come from this declaration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Limit:
    """One per-key limit: its KeyLimits field (and VARY_KEY_<FIELD> default), its `vary keys` flag, what it
    counts, and how the limiter checks it."""

    field: str
    flag: str
    counts: str
    # window: a moving minute; concurrency: requests in flight; quota: images per quota period.
    kind: Literal["window", "concurrency", "quota"]
    unit: Literal["requests", "images"]

    def cost(self, *, new: bool, images: int) -> int | None:
        """What one admission step takes from this limit; None where the step does not touch it.

        A request is admitted in two steps: what the key alone decides (`new`, images still 0), then its
        images once the form says n. Requests count at the first step, images at the second; the quota
        is checked at both, the first making sure at least one image is left.
        """
        if self.unit == "requests":
            return 1 if new else None
        if self.kind == "quota":
            return max(images, 1)
        return images or None


LIMITS = (
    Limit("requests_per_minute", "--rpm", "requests per minute", "window", "requests"),
    Limit("images_per_minute", "--ipm", "images per minute", "window", "images"),
    Limit("max_concurrent", "--concurrency", "requests in flight at once", "concurrency", "requests"),
    Limit("image_quota", "--quota", "images per quota period (VARY_QUOTA_PERIOD: month or day)", "quota", "images"),
)


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits: None takes the server's default, 0 means unlimited.

    Resolved against the defaults (`for_key`), None means unlimited.
    """

    requests_per_minute: int | None = None
    images_per_minute: int | None = None
    max_concurrent: int | None = None
    image_quota: int | None = None  # images per quota period (VARY_QUOTA_PERIOD)

    @classmethod
    def for_key(cls, own: KeyLimits, defaults: KeyLimits) -> KeyLimits:
        """The limits in force for a key: its own where it has them, else the server's."""

        def pick(mine: int | None, default: int | None) -> int | None:
            if mine is None:
                return default
            return mine or None  # 0: unlimited, whatever the default

        return cls(**{name: pick(getattr(own, name), getattr(defaults, name)) for name in LIMIT_FIELDS})


LIMIT_FIELDS = tuple(limit.field for limit in LIMITS)
assert LIMIT_FIELDS == tuple(field.name for field in dataclasses.fields(KeyLimits)), "LIMITS declares every field"
