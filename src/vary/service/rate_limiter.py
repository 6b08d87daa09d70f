"""Per-key limits: requests and images per minute, concurrent requests, and an image quota per period.

The minute windows are moving windows from the `limits` library, so a key never gets more than its
limit in any 60 seconds. They live in a `limits` storage: memory:// for one process, and the same
code takes redis:// to share them between replicas; taking from a window is atomic there, so two
replicas racing for a key's last request cannot both get it. If that storage fails, requests are
let through without the minute windows (fail open, logged), as gateways do: a Redis outage must not
take the service down. Concurrency is counted in this process. The quota is counted from the usage
table (what was delivered since the period began) plus what is in flight, so it survives restarts
and is never exceeded.

Headers follow OpenAI's: x-ratelimit-{limit,remaining,reset}-requests, and -images for images.
"""

from __future__ import annotations

import calendar
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from limits import RateLimitItemPerMinute, WindowStats
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from vary.errors import QuotaExceeded, RateLimited
from vary.key_limits import LIMITS, KeyLimits, Limit

log = logging.getLogger("vary.ratelimit")

# Requests under --no-auth share this identity.
ANONYMOUS = "-"


@dataclass
class Admission:
    """An admitted request: its rate-limit headers, and the slot and quota it holds until released."""

    key_id: str
    images: int
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False


def quota_period_start(now: float, period: str) -> float:
    """The UTC start of the calendar day or month that `now` falls in."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = start.replace(day=1)
    return calendar.timegm(start.timetuple())


def reset_duration(seconds: float) -> str:
    """OpenAI's format for x-ratelimit-reset-*: 1s, 6m0s, 1h2m3s."""
    total = max(1, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class RateLimiter:
    def __init__(
        self,
        *,
        defaults: KeyLimits,
        quota_period: str = "month",
        storage_uri: str = "memory://",
    ) -> None:
        self.defaults = defaults
        self.quota_period = quota_period
        self._windows = MovingWindowRateLimiter(storage_from_string(storage_uri, wrap_exceptions=True))
        # Admissions one at a time: each checks every limit, then takes from them (a window is a call to
        # its storage, redis:// a network one, so this is held across I/O, on worker threads only).
        self._lock = threading.Lock()
        # The counts alone, held for a few dict operations: release() takes only this, and runs on the
        # event loop, which must never wait for an admission asking a slow storage.
        self._counts = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._reserved_images: dict[str, int] = {}

    def limits_for(self, own: KeyLimits | None) -> KeyLimits:
        return KeyLimits.for_key(own, self.defaults) if own is not None else self.defaults

    def admit(self, key_id: str, limits: KeyLimits, images: int, *, delivered: int = 0) -> Admission:
        """Admits a request for `images` images or raises a 429; `delivered` is the quota used so far.

        Blocking (a redis:// storage is a network call): call it off the event loop."""
        return self._admit(key_id, limits, None, images, delivered)

    def admit_request(self, key_id: str, limits: KeyLimits, *, delivered: int = 0) -> Admission:
        """What the key alone decides, before its request's body is read: the requests window, the
        concurrency, and a quota already used up. The images follow with `admit_images` once n is known."""
        return self._admit(key_id, limits, None, 0, delivered)

    def admit_images(self, admission: Admission, limits: KeyLimits, images: int, *, delivered: int = 0) -> None:
        """The images of a request `admit_request` admitted: the images window and the quota, or a 429."""
        self._admit(admission.key_id, limits, admission, images, delivered)

    def _admit(
        self, key_id: str, limits: KeyLimits, admitted: Admission | None, images: int, delivered: int
    ) -> Admission:
        """A new request (`admitted` None) with `images` images (0: not known yet), or the images of an
        admitted one. Every declared limit is checked, then everything taken: a refused step takes nothing."""
        new = admitted is None
        with self._lock:
            step = _Step(key_id, new, images, delivered, {} if admitted is None else admitted.headers)
            takes = [take for limit in LIMITS if (take := self._check(limit, getattr(limits, limit.field), step))]
            for take in takes:
                take()
            with self._counts:
                if new:
                    self._in_flight[key_id] = self._in_flight.get(key_id, 0) + 1
                self._reserved_images[key_id] = self._reserved_images.get(key_id, 0) + images
                admission = admitted or Admission(key_id, 0, step.headers)
                admission.images += images
        return admission

    def _check(self, limit: Limit, value: int | None, step: _Step) -> Callable[[], None] | None:
        """Raises the 429 this limit gives the step, or returns what taking from it is (windows only)."""
        cost = limit.cost(new=step.new, images=step.images)
        if value is None or cost is None:
            return None
        if limit.kind == "window":
            return self._check_window(limit.unit, value, cost, step)
        if limit.kind == "concurrency":
            with self._counts:
                in_flight = self._in_flight.get(step.key_id, 0)
            if in_flight + cost > value:
                raise _too_many(
                    f"Rate limit reached for concurrent requests: Limit {value}, "
                    f"In flight {in_flight}. Retry when one of them finishes.",
                    "requests",
                    step.headers,
                    retry_after=1,
                )
            return None
        with self._counts:
            used = step.delivered + self._reserved_images.get(step.key_id, 0)
        if used + cost > value:  # a request gets at least one image
            requested = f"{step.images} requested" if step.images else "no images left"
            raise QuotaExceeded(
                f"You exceeded your current quota of {value} images per {self.quota_period}: {used} used, {requested}.",
                headers=step.headers,
            )
        return None

    def _check_window(self, kind: str, limit: int, cost: int, step: _Step) -> Callable[[], None] | None:
        """A minute window: refused when it has no room for `cost`; a storage that fails lets the step through
        without its windows (fail open), and the headers it half wrote are dropped."""
        if step.windows_failed:
            return None
        try:
            item = self._window_check(step.key_id, kind, limit, cost, step.headers)
        except StorageError as exc:
            _fail_open(exc)
            step.windows_failed = True
            for name in [name for name in step.headers if step.new or name.endswith("-images")]:
                del step.headers[name]
            return None
        return lambda: self._take(item, step.key_id, kind, cost, step.headers)

    def release(self, admission: Admission) -> None:
        """Gives back the request's slot and reserved images; never waits for an admission in progress."""
        with self._counts:
            if admission.released:
                return
            admission.released = True
            self._in_flight[admission.key_id] -= 1
            self._reserved_images[admission.key_id] -= admission.images

    def _take(self, item: RateLimitItemPerMinute, key_id: str, kind: str, cost: int, headers: dict[str, str]) -> None:
        try:
            if not self._windows.hit(item, key_id, kind, cost=cost):
                # Another replica took the window's last room since the check: refuse as the check would.
                self._window_check(key_id, kind, item.amount, cost, headers)
            self._window_headers(item, key_id, kind, headers)  # as they stand after this request
        except StorageError as exc:
            _fail_open(exc)

    def _window_headers(
        self, item: RateLimitItemPerMinute, key_id: str, kind: str, headers: dict[str, str]
    ) -> WindowStats:
        stats = self._windows.get_window_stats(item, key_id, kind)
        headers[f"x-ratelimit-limit-{kind}"] = str(item.amount)
        headers[f"x-ratelimit-remaining-{kind}"] = str(stats.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = reset_duration(stats.reset_time - time.time())
        return stats

    def _window_check(
        self, key_id: str, kind: str, limit: int, cost: int, headers: dict[str, str]
    ) -> RateLimitItemPerMinute:
        item = RateLimitItemPerMinute(limit, namespace=kind)
        stats = self._window_headers(item, key_id, kind, headers)
        if cost > stats.remaining:
            unit = "requests" if kind == "requests" else "images"
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            raise _too_many(
                f"Rate limit reached for {unit} per min: Limit {limit}, Used {limit - stats.remaining}, "
                f"Requested {cost}. Please try again in {reset_duration(wait)}.",
                kind,
                headers,
                retry_after=wait,
            )
        return item


@dataclass
class _Step:
    """One admission step: whose, whether it is a new request, its images, the quota used, its headers."""

    key_id: str
    new: bool
    images: int
    delivered: int
    headers: dict[str, str]
    windows_failed: bool = False


def _fail_open(exc: StorageError) -> None:
    log.error("rate-limit storage failed; admitting without the minute windows: %s", exc)


def _too_many(message: str, kind: str, headers: dict[str, str], *, retry_after: int) -> RateLimited:
    return RateLimited(message, unit=kind, retry_after=retry_after, headers=headers)
