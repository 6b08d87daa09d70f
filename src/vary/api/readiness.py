"""The readiness probe behind /readyz: at most one real probe every few seconds, whoever asks.

/readyz answers without a key, and its probe writes (a database row, and a file or an S3 PUT and DELETE,
billed on S3): a flood of it must not make readiness flap nor slow the requests that pay. So the writes
are made at most once per interval, by one caller while the others wait for it, and every answer in
between is the last probe's. What costs nothing (the models' states, the spooled rows) is read fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from vary.service.components import Services


@dataclass(frozen=True)
class Probe:
    store: str  # "ok" or "failing: <kind>"
    database: str
    at: float  # time.monotonic() of the probe


class ReadinessProbe:
    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.draining = False  # set on SIGTERM: /readyz fails from then on, whatever the probes say
        self._last: Probe | None = None
        self._lock = asyncio.Lock()

    def drain(self) -> None:
        """The server is going away: load balancers must stop sending (it still serves what arrives)."""
        self.draining = True

    async def latest(self, services: Services) -> Probe:
        """The last probe when it is younger than the interval, else a new one."""
        if self._fresh(self._last):
            assert self._last is not None
            return self._last
        async with self._lock:  # the callers of one stale moment share one probe
            if not self._fresh(self._last):
                store = await run_in_threadpool(_check, services.store.check_writable)
                database = await run_in_threadpool(_check, services.db.check_writable)
                self._last = Probe(store, database, time.monotonic())
            assert self._last is not None
            return self._last

    def _fresh(self, probe: Probe | None) -> bool:
        return probe is not None and time.monotonic() - probe.at < self.interval_seconds


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - the kind of failure is the answer; details stay in the log
        return f"failing: {type(exc).__name__}"
    return "ok"
