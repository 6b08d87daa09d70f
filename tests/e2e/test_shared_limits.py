"""Two vary replicas sharing one Redis for their rate-limit windows (VARY_RATE_LIMIT_STORAGE=redis://).

A real redis-server on loopback, started and stopped by the test. Both replicas serve one data dir, so
they know the same keys; a key's requests per minute are counted once across them. And when Redis is
not there at all, requests are still served.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.harness import Running, serve
from vary.testing import free_port

REDIS_SERVER = shutil.which("redis-server")
WAIT_S = 60


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None and not os.environ.get("VARY_REQUIRE_REDIS"):
        pytest.skip("no redis-server (apt install redis-server); .ci/run installs it")
    assert REDIS_SERVER is not None, "VARY_REQUIRE_REDIS is set but no redis-server is installed"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(WAIT_S)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Running, Running]]:
    root = tmp_path_factory.mktemp("replicas")  # one data dir, and no key until the first start makes one
    env = {"VARY_RATE_LIMIT_STORAGE": redis_url}
    same = {"env": env, "key": False, "request_timeout": WAIT_S}
    with serve(root, **same) as first, serve(root, **same) as second:
        yield first, second


def test_requests_per_minute_are_counted_across_replicas(replicas: tuple[Running, Running]) -> None:
    a, b = replicas
    _, key = a.new_key("shared-rpm", requests_per_minute=3)
    answers = [replica.post_variation(key) for replica in (a, b, a, b, a)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0", "0"]
    assert answers[3].json()["error"]["code"] == "rate_limit_exceeded"


def test_images_per_minute_are_counted_across_replicas(replicas: tuple[Running, Running]) -> None:
    a, b = replicas
    _, key = a.new_key("shared-ipm", images_per_minute=5)
    assert a.post_variation(key, n="3").status_code == 200
    refused = b.post_variation(key, n="3")  # 3 + 3 > 5, though this replica has served none
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "images"
    assert b.post_variation(key, n="2").status_code == 200  # exactly up to the bound
    assert a.post_variation(key, n="1").status_code == 429


def test_requests_are_served_when_redis_is_down(start_server: Callable[..., Running]) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: connections are refused
    vary = start_server(env={"VARY_RATE_LIMIT_STORAGE": nobody}, request_timeout=WAIT_S)
    _, key = vary.new_key("no-redis", requests_per_minute=1)
    answers = [vary.post_variation(key), vary.post_variation(key)]
    log = vary.server.log()
    # Fail open: the minute windows cannot be counted, so they do not refuse; no headers claim otherwise.
    assert [r.status_code for r in answers] == [200, 200]
    assert not any(name.startswith("x-ratelimit-") for r in answers for name in r.headers)
    assert "rate-limit storage failed; admitting without the minute windows" in log
