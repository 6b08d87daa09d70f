"""What the end-to-end tests of the job-taking providers (fal, Replicate, BFL) share: the usage row, a request
timed while /healthz is asked meanwhile, and bounded waits for what the server does after it answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.harness import Running, usage_rows
from vary.state.schema import UsageRow

# The options that keep a job provider's tests quick: a short poll, short backoffs, no breaker.
QUICK = {"poll_interval_seconds": 0.05, "backoff_seconds": 0.05, "max_backoff_seconds": 2, "circuit_failures": 1000}


def last_row(data_dir: Path) -> UsageRow:
    return max(usage_rows(data_dir), key=lambda row: row.id)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether `check` comes true within `timeout` seconds: for what the server does after it has answered."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # poll interval, bounded by the deadline
    return True


@dataclass
class Timed:
    """A request's answer, how long it took, and the /healthz answers the server gave while it ran."""

    response: httpx.Response | None
    seconds: float
    health: list[int] = field(default_factory=list)


def timed_with_health(running: Running, send: Callable[[], httpx.Response | None]) -> Timed:
    """`send` in a thread, timed, while /healthz is asked every 0.2 s (each with a 5 s timeout)."""
    result: dict[str, httpx.Response | None] = {}
    started = time.monotonic()
    worker = threading.Thread(target=lambda: result.update(answer=send()))
    worker.start()
    health: list[int] = []
    while worker.is_alive():
        try:
            health.append(httpx.get(f"{running.base_url}/healthz", timeout=5).status_code)
        except httpx.TransportError:
            health.append(0)
        worker.join(timeout=0.2)
    return Timed(result.get("answer"), time.monotonic() - started, health)
