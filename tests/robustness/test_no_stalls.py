"""Nothing on the event loop waits on a provider: while a hosted provider trickles its answer in past
`timeout_seconds`, the attempt is cut off near that timeout (not after the whole trickle), and the server
answers /healthz all along. Every hosted target: Nova Canvas (boto3, a blocking call on a thread) and an
OpenAI-compatible one (httpx, streamed on the loop).

Times are measured, with generous bounds: "cut off near the timeout" means well before the trickle ends,
and "answered meanwhile" means each /healthz came back within a couple of seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.bedrock import FakeBedrock
from tests.fakes.providers import FakeProvider
from tests.harness import Running, aws_env, catalogue, hosted, post_variation, serve

TIMEOUT_S = 2.0  # the providers' timeout_seconds
TRICKLE_S = 14.0  # how long the answer takes to trickle in whole
HEALTHZ_BOUND_S = 2.5  # "a couple of seconds": a stalled loop took 12 s
ACCESS_KEY = "AKIAFAKEVARYTEST0037"
REGION = "eu-west-1"
UPSTREAM_KEY = "sk-upstream-no-stalls"


def one_attempt(**options: object) -> dict[str, object]:
    """A hosted target's options: one attempt, cut at TIMEOUT_S, no breaker."""
    return {"timeout_seconds": TIMEOUT_S, "max_attempts": 1, "circuit_failures": 1000, **options}


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[FakeBedrock, FakeProvider]]:
    with FakeBedrock(access_key=ACCESS_KEY, region=REGION) as bedrock, FakeProvider(key=UPSTREAM_KEY) as upstream:
        yield bedrock, upstream


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, providers: tuple[FakeBedrock, FakeProvider]) -> Iterator[Running]:
    bedrock, upstream = providers
    root: Path = tmp_path_factory.mktemp("no-stalls")
    text = catalogue(
        hosted("nova", "bedrock-nova-canvas", bedrock.endpoint_url, **one_attempt(region=REGION)),
        hosted("compatible", "openai-compatible", f"{upstream.base_url}/v1", key_env="UPSTREAM_KEY", **one_attempt()),
        hosted(
            "bounded",
            "openai-compatible",
            f"{upstream.base_url}/v1",
            key_env="UPSTREAM_KEY",
            **one_attempt(timeout_seconds=60, max_concurrent=1),
        ),
        default="nova",
    )
    with serve(root, catalogue=text, env={**aws_env(root, ACCESS_KEY), "UPSTREAM_KEY": UPSTREAM_KEY}) as server:
        yield server


def while_polling_healthz(base_url: str, work: threading.Thread) -> list[float]:
    """/healthz's latency, asked one after another for as long as `work` runs (each bounded by its own timeout)."""
    latencies = []
    with httpx.Client(timeout=30.0) as client:
        work.start()
        while work.is_alive():
            started = time.monotonic()
            assert client.get(f"{base_url}/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
            work.join(0.1)  # the poll's pace, bounded: returns as soon as the request is answered
    return latencies


@pytest.mark.parametrize("model", ["nova", "compatible"])
def test_a_trickling_provider_is_cut_off_at_its_timeout_and_healthz_answers_meanwhile(
    running: Running, providers: tuple[FakeBedrock, FakeProvider], model: str
) -> None:
    base_url, key = running.base_url, running.key
    bedrock, upstream = providers
    if model == "nova":
        bedrock.faults.append(("trickle", TRICKLE_S))
    else:
        upstream.fail("openai", ("trickle", TRICKLE_S))
    outcome: dict[str, object] = {}

    def request() -> None:
        started = time.monotonic()
        outcome["answer"] = post_variation(base_url, key, model=model, size="512x512")
        outcome["seconds"] = time.monotonic() - started

    latencies = while_polling_healthz(base_url, threading.Thread(target=request))
    answer = outcome["answer"]
    assert isinstance(answer, httpx.Response)
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    seconds = outcome["seconds"]
    assert isinstance(seconds, float)
    # Near the timeout, and nowhere near the whole trickle.
    assert seconds < TIMEOUT_S + (TRICKLE_S - TIMEOUT_S) / 2, f"the request took {seconds:.1f}s"
    assert latencies, "healthz was never asked"
    assert max(latencies) < HEALTHZ_BOUND_S, f"/healthz took {max(latencies):.1f}s while the provider trickled"


def test_a_hosted_target_at_its_concurrency_bound_refuses_at_once_in_openai_s_shape(
    running: Running, providers: tuple[FakeBedrock, FakeProvider]
) -> None:
    """max_concurrent = 1: while one request is in the provider's hands, the next gets a 429 with Retry-After
    without waiting and without reaching the provider; once the first ends, the next is served."""
    _, upstream = providers
    released = threading.Event()
    upstream.fail("openai", ("hold", released))
    calls = len(upstream.calls_to("openai"))
    held: list[httpx.Response] = []
    first = threading.Thread(target=lambda: held.append(post_variation(running.base_url, running.key, model="bounded")))
    first.start()
    try:
        deadline = time.monotonic() + 60
        while len(upstream.calls_to("openai")) == calls:
            assert time.monotonic() < deadline, "the first request never reached the provider"
            time.sleep(0.05)  # poll, bounded by the deadline
        refused = post_variation(running.base_url, running.key, model="bounded")
        assert refused.status_code == 429, refused.text
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        assert int(refused.headers["retry-after"]) >= 1
        assert len(upstream.calls_to("openai")) == calls + 1, "the refused request reached the provider"
    finally:
        released.set()
        first.join(60)
    assert held and held[0].status_code == 200, held
    assert post_variation(running.base_url, running.key, model="bounded").status_code == 200
