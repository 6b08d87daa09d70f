"""The overload run, short: several times the queue's capacity, every answer checked, memory back down."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.harness import serve
from tests.robustness.overload import run, server_env, table, warm_up

MiB = 1024 * 1024
REQUESTS = int(os.environ.get("VARY_OVERLOAD_REQUESTS", "160"))  # longer: python -m tests.robustness.overload
CONCURRENCY, QUEUE_SIZE = 24, 4


def test_overload_answers_every_request_correctly_or_with_429(tmp_path: Path) -> None:
    with serve(tmp_path, env=server_env(QUEUE_SIZE)) as vary:
        base_url, key = vary.base_url, vary.key
        assert vary.server.process is not None
        pid = vary.server.process.pid
        warm_up(base_url, key)
        outcome = asyncio.run(run(base_url, key, pid, requests=REQUESTS, concurrency=CONCURRENCY, time_limit=600))
        again = asyncio.run(run(base_url, key, pid, requests=REQUESTS, concurrency=CONCURRENCY, time_limit=600))
        log = vary.server.log()
    print(table(outcome, concurrency=CONCURRENCY, queue_size=QUEUE_SIZE))
    for result in (outcome, again):
        assert result.total == REQUESTS
        assert set(result.statuses) <= {200, 429}, result.statuses
        assert result.statuses[429] > 0, "the run never overloaded the queue"  # else it proved nothing
        assert result.statuses[200] > 0
        assert result.wrong == []
    assert "Traceback" not in log
    # Memory returns to its baseline once the load is over: what stays is the worker threads the burst
    # started (their stacks, about 1 MiB each; 20 MiB here). A leak would keep what every request took.
    for result in (outcome, again):
        assert result.rss_after - outcome.rss_before < 64 * MiB, table(
            result, concurrency=CONCURRENCY, queue_size=QUEUE_SIZE
        )
