"""Per-key limits at their exact bounds, on a controlled clock (time-machine), never on sleeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import time_machine
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from vary.api.errors import ApiError, api_error
from vary.errors import VaryError
from vary.key_limits import KeyLimits
from vary.key_limits import KeyLimits as Limits
from vary.service.rate_limiter import RateLimiter, quota_period_start, reset_duration

START = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture()
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def refused(limiter: RateLimiter, limits: Limits, images: int = 1, *, delivered: int = 0) -> ApiError:
    with pytest.raises(VaryError) as error:
        limiter.admit("k", limits, images, delivered=delivered)
    answer = api_error(error.value)  # what the client is sent
    assert answer.status == 429
    return answer


def test_requests_per_minute_exactly_at_the_bound_in_a_moving_window(clock: time_machine.Coordinates) -> None:
    limits = Limits(requests_per_minute=3)
    limiter = RateLimiter(defaults=limits)
    remaining = []
    for _ in range(3):
        admission = limiter.admit("k", limits, 1)
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
        limiter.release(admission)
        clock.shift(10)
    assert remaining == ["2", "1", "0"]
    error = refused(limiter, limits)  # t = 30 s: three in the last minute
    assert error.body()["error"] == {
        "message": "Rate limit reached for requests per min: Limit 3, Used 3, Requested 1. Please try again in 30s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert error.headers["Retry-After"] == "30"
    assert error.headers["x-ratelimit-limit-requests"] == "3"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-reset-requests"] == "30s"
    clock.shift(29.9)
    refused(limiter, limits)  # the first request is still inside the window
    clock.shift(0.2)
    limiter.release(limiter.admit("k", limits, 1))  # now it is not: exactly one slot came back
    refused(limiter, limits)


def test_images_per_minute_counts_n_and_a_refused_request_costs_nothing(clock: time_machine.Coordinates) -> None:
    limits = Limits(requests_per_minute=10, images_per_minute=5)
    limiter = RateLimiter(defaults=limits)
    first = limiter.admit("k", limits, 3)
    assert first.headers["x-ratelimit-remaining-images"] == "2"
    error = refused(limiter, limits, 3)
    assert (error.type, error.code) == ("images", "rate_limit_exceeded")
    assert "Limit 5, Used 3, Requested 3" in error.message
    second = limiter.admit("k", limits, 2)  # the refused request took neither a request nor images
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert second.headers["x-ratelimit-remaining-images"] == "0"
    clock.shift(61)
    assert limiter.admit("k", limits, 5).headers["x-ratelimit-remaining-images"] == "0"


def test_keys_are_limited_separately(clock: time_machine.Coordinates) -> None:
    limits = Limits(requests_per_minute=1)
    limiter = RateLimiter(defaults=limits)
    limiter.admit("a", limits, 1)
    limiter.admit("b", limits, 1)
    with pytest.raises(VaryError):
        limiter.admit("a", limits, 1)


def test_concurrent_requests_until_one_is_released(clock: time_machine.Coordinates) -> None:
    limits = Limits(max_concurrent=2)
    limiter = RateLimiter(defaults=limits)
    held = [limiter.admit("k", limits, 1), limiter.admit("k", limits, 1)]
    error = refused(limiter, limits)
    assert error.message.startswith("Rate limit reached for concurrent requests: Limit 2, In flight 2.")
    limiter.release(held[0])
    limiter.release(held[0])  # releasing twice frees one slot, not two
    limiter.admit("k", limits, 1)
    refused(limiter, limits)


def test_the_quota_counts_what_was_delivered_and_what_is_in_flight(clock: time_machine.Coordinates) -> None:
    limits = Limits(image_quota=10)
    limiter = RateLimiter(defaults=limits, quota_period="month")
    in_flight = limiter.admit("k", limits, 4, delivered=5)
    error = refused(limiter, limits, 2, delivered=5)  # 5 delivered + 4 in flight + 2 > 10
    assert error.body()["error"] == {
        "message": "You exceeded your current quota of 10 images per month: 9 used, 2 requested.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    limiter.admit("k", limits, 1, delivered=5)  # exactly 10
    limiter.release(in_flight)
    limiter.admit("k", limits, 4, delivered=5)  # the released images are no longer reserved


def test_a_key_s_own_limits_win_and_zero_means_unlimited() -> None:
    defaults = Limits(requests_per_minute=60, images_per_minute=100, max_concurrent=4, image_quota=1000)
    own = KeyLimits(requests_per_minute=5, images_per_minute=0)
    assert Limits.for_key(own, defaults) == Limits(5, None, 4, 1000)
    assert RateLimiter(defaults=defaults).limits_for(None) == defaults


def test_reset_durations_and_quota_periods() -> None:
    assert [reset_duration(s) for s in (0.2, 1, 59.1, 60, 361, 3723)] == ["1s", "1s", "1m0s", "1m0s", "6m1s", "1h2m3s"]
    now = datetime(2026, 11, 22, 15, 30, tzinfo=timezone.utc).timestamp()
    assert quota_period_start(now, "day") == datetime(2026, 11, 22, tzinfo=timezone.utc).timestamp()
    assert quota_period_start(now, "month") == datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()


class StalledStorage(MemoryStorage):
    """A window storage that answers only once `answering` is set: Redis frozen while its socket stays open."""

    def __init__(self) -> None:
        super().__init__()
        self.answering = threading.Event()
        self.asked = threading.Event()

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        self.asked.set()
        self.answering.wait(30)
        return super().get_moving_window(key, limit, expiry)


def test_releasing_never_waits_for_an_admission_stuck_on_the_window_storage() -> None:
    """release() runs on the event loop (when a request's usage row is written): it must not wait on what an
    admission in a worker thread holds while it asks a slow rate-limit storage."""
    limits = Limits(requests_per_minute=100)
    limiter = RateLimiter(defaults=limits)
    first = limiter.admit("k", limits, 1)
    storage = StalledStorage()
    limiter._windows = MovingWindowRateLimiter(storage)
    admitting = threading.Thread(target=lambda: limiter.admit("k", limits, 1))
    admitting.start()
    try:
        assert storage.asked.wait(30), "the admission never asked the storage"
        releasing = threading.Thread(target=limiter.release, args=(first,))
        releasing.start()
        releasing.join(10)
        assert not releasing.is_alive(), "release() waited for the stuck admission"
        assert admitting.is_alive()  # still stuck: the release did not wait for it
    finally:
        storage.answering.set()
        admitting.join(30)
