"""A server told to stop while a request is still running: SIGTERM, Ctrl-C, or Ctrl-C twice.

The request gets OpenAI's JSON, a 503 with Retry-After (code server_shutting_down), never uvicorn's
plain-text 500; the log says it in one line (the request's own), never with a traceback; a second Ctrl-C
stops at once and quietly. The request is held by a provider on loopback until the test lets it go, so it
is still running when the server's graceful shutdown (1 s here) runs out.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_key
from tests.fakes.providers import FakeProvider
from tests.harness import catalogue, hosted, post_variation
from vary.state.database import Database
from vary.testing import ServerProcess

KEY = "sk-upstream-stopping"
WAIT_S = 60.0


@pytest.fixture()
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider(key=KEY).start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT",), ("SIGINT", "SIGINT")], ids=["term", "int", "int-twice"])
def test_a_request_running_when_the_server_stops_gets_a_503_in_openai_s_shape(
    tmp_path: Path, provider: FakeProvider, signals: tuple[str, ...]
) -> None:
    released = threading.Event()
    provider.fail("openai", ("hold", released))
    (tmp_path / "vary.toml").write_text(
        catalogue(hosted("up", "openai-compatible", f"{provider.base_url}/v1", key_env="UP_KEY"), default="up")
    )
    data_dir = tmp_path / "data"
    key = create_key(data_dir)[1]
    env = {"UP_KEY": KEY, "VARY_SHUTDOWN_TIMEOUT_SECONDS": "1", "VARY_LOG_FORMAT": "json"}
    server = ServerProcess(data_dir, extra_args=["--catalogue", str(tmp_path / "vary.toml")], env=env).start()
    answers: list[httpx.Response] = []
    try:
        client = threading.Thread(target=lambda: answers.append(post_variation(server.base_url, key, timeout=WAIT_S)))
        client.start()
        deadline = time.monotonic() + WAIT_S
        while not provider.calls_to("openai"):  # the request is in the provider's hands
            assert time.monotonic() < deadline, "the request never reached the provider"
            time.sleep(0.05)  # poll, bounded by the deadline
        assert server.process is not None
        for name in signals:
            server.process.send_signal(getattr(signal, name))
            time.sleep(0.2)  # the second Ctrl-C comes while the first one's graceful wait runs
        client.join(WAIT_S)
        server.process.wait(WAIT_S)
    finally:
        released.set()
        server.stop()
    assert answers, "the client got no answer"
    answer = answers[0]
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "server_shutting_down"
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert int(answer.headers["retry-after"]) >= 1
    # uvicorn ends by raising the signal again: the exit of a process stopped by SIGTERM, or Ctrl-C
    assert server.process is not None and server.process.returncode in (0, 130, -signal.SIGINT, -signal.SIGTERM)
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert max(len(line) for line in log.splitlines()) < 2000, "a line of the log is a dump"
    request_lines = [line for line in log.splitlines() if "/v1/images/variations" in line]
    assert len(request_lines) == 1 and '"status": 503' in request_lines[0], request_lines
    db = Database.open(data_dir / "vary.db")
    try:
        assert [row.status for row in db.usage_rows()] == [503]
    finally:
        db.close()
