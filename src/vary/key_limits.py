"""Per-key limits, declared once: the settings' defaults, the database's columns, the CLI's flags and
the limiter all use this type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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


LIMIT_FIELDS = tuple(field.name for field in dataclasses.fields(KeyLimits))
# The command line's flag for each limit, and what it counts.
LIMIT_FLAGS = {
    "--rpm": ("requests_per_minute", "requests per minute"),
    "--ipm": ("images_per_minute", "images per minute"),
    "--concurrency": ("max_concurrent", "requests in flight at once"),
    "--quota": ("image_quota", "images per quota period (VARY_QUOTA_PERIOD: month or day)"),
}
assert sorted(dest for dest, _ in LIMIT_FLAGS.values()) == sorted(LIMIT_FIELDS)
