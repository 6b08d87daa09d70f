"""Nova Canvas under faults, through a real `vary serve` and a fake Bedrock runtime on loopback: one retry
policy (the gateway's: botocore makes one attempt), one deadline for the whole answer, a throttle without
Retry-After, a split request whose one call fails, and seeds past Nova's range."""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes.bedrock import FakeBedrock
from tests.harness import Running, aws_env, catalogue, hosted, serve, usage_rows
from vary.state.schema import UsageRow

pytest.importorskip("boto3", reason='boto3 is the bedrock extra: pip install -e ".[bedrock]" (the test extra has it)')

ACCESS_KEY = "AKIAFAKEVARYTEST0002"
REGION = "eu-west-1"
NOVA_SEEDS = 2147483647  # Nova takes 0 to 2^31 - 2
SIZE = "512x512"


@dataclass
class Nova:
    vary: Running
    bedrock: FakeBedrock

    def last_usage(self) -> UsageRow:
        return max(usage_rows(self.vary.data_dir), key=lambda row: row.id)


@pytest.fixture(scope="module")
def nova(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nova]:
    bedrock = FakeBedrock(access_key=ACCESS_KEY, region=REGION).start()
    root = tmp_path_factory.mktemp("bedrock-faults")
    nova = hosted(
        "nova",
        "bedrock-nova-canvas",
        None,
        region=REGION,
        endpoint_url=bedrock.endpoint_url,
        timeout_seconds=2,
        max_attempts=3,
        backoff_seconds=1,
        circuit_failures=1000,
    )
    models = catalogue(nova, default="nova")
    try:
        with serve(root, catalogue=models, env=aws_env(root, ACCESS_KEY)) as vary:
            yield Nova(vary, bedrock)
    finally:
        bedrock.stop()


def test_a_trickling_answer_is_cut_off_by_the_attempt_timeout(nova: Nova) -> None:
    """Each read arrives in time, the whole answer does not: timeout_seconds (2) bounds the whole."""
    nova.bedrock.faults.extend([("trickle", 12.0)] * 3)
    answer = nova.vary.post_variation(size=SIZE)
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    usage = nova.last_usage()
    assert (usage.status, usage.targets_tried) == (502, "nova:3")


def test_every_call_is_a_gateway_attempt_in_the_usage_row(nova: Nova) -> None:
    """botocore makes one attempt per call; the gateway's retries are the only ones, and all are counted."""
    nova.bedrock.faults.extend([("throttle",), ("status", 503)])
    attempts = nova.bedrock.attempts
    answer = nova.vary.post_variation(size=SIZE)
    assert answer.status_code == 200, answer.text
    assert nova.bedrock.attempts == attempts + 3
    usage = nova.last_usage()
    assert (usage.attempts, usage.targets_tried) == (3, "nova:3")


@pytest.mark.parametrize("fault", ["wrong_count", "not_an_image", "trickle"])
def test_a_bad_200_answer_is_retried_like_any_retryable_failure(nova: Nova, fault: str) -> None:
    nova.bedrock.faults.append((fault, 12.0))
    attempts = nova.bedrock.attempts
    answer = nova.vary.post_variation(size=SIZE)
    assert answer.status_code == 200, answer.text
    assert nova.bedrock.attempts == attempts + 2
    assert nova.last_usage().targets_tried == "nova:2"


def test_a_throttle_without_retry_after_is_told_the_gateways_own_backoff(nova: Nova) -> None:
    """Bedrock sends no Retry-After: the client is told the wait vary itself would take next (1 s x 2^2)."""
    nova.bedrock.faults.extend([("throttle",)] * 3)
    answer = nova.vary.post_variation(size=SIZE)
    assert answer.status_code == 429, answer.text
    assert answer.headers["Retry-After"] == "4"
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"


def test_when_one_of_two_calls_fails_only_its_part_is_asked_for_again(nova: Nova) -> None:
    calm = nova.vary.post_variation(size=SIZE, n="7", seed="40")
    assert calm.status_code == 200
    before = len(nova.bedrock.calls)
    nova.bedrock.seed_faults[40] = deque([("status", 500)])  # call 0 fails; call 1 (seed 41) is made and billed
    answer = nova.vary.post_variation(size=SIZE, n="7", seed="40")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == calm.json()["data"], "the same images, in the same order"
    assert answer.headers["x-vary-seed"] == "40"
    calls = [call["imageGenerationConfig"] for call in nova.bedrock.calls[before:]]
    assert sorted((c["seed"], c["numberOfImages"]) for c in calls) == [(40, 5), (41, 2)], "seed 41 is not asked again"
    usage = nova.last_usage()
    assert (usage.targets_tried, usage.unused_images) == ("nova:2", None)


def test_a_part_that_keeps_failing_is_all_or_nothing_and_its_paid_images_are_recorded(nova: Nova) -> None:
    before = len(nova.bedrock.calls)
    nova.bedrock.seed_faults[41] = deque([("status", 500)] * 3)  # call 1 fails on every attempt
    answer = nova.vary.post_variation(size=SIZE, n="7", seed="40")
    assert answer.status_code == 502, answer.text
    assert "data" not in answer.json()
    calls = [call["imageGenerationConfig"] for call in nova.bedrock.calls[before:]]
    assert [(c["seed"], c["numberOfImages"]) for c in calls] == [(40, 5)]  # made once, never again
    usage = nova.last_usage()
    assert (usage.status, usage.targets_tried) == (502, "nova:3")
    assert usage.unused_images == 5  # billed by Nova, never given to the client


@pytest.mark.parametrize("seed", [2**31 + 5, NOVA_SEEDS - 1, 2**63 - 1])
def test_seeds_past_novas_range_are_mapped_and_the_seed_sent_is_reported(nova: Nova, seed: int) -> None:
    before = len(nova.bedrock.calls)
    answer = nova.vary.post_variation(size=SIZE, n="7", seed=str(seed))
    assert answer.status_code == 200, answer.text
    sent = sorted(
        (c["imageGenerationConfig"]["numberOfImages"], c["imageGenerationConfig"]["seed"])
        for c in nova.bedrock.calls[before:]
    )
    first = seed % NOVA_SEEDS
    assert sent == [(2, (first + 1) % NOVA_SEEDS), (5, first)]
    assert answer.headers["x-vary-seed"] == str(first)
    # The reported seed repeats the request exactly.
    again = nova.vary.post_variation(size=SIZE, n="7", seed=answer.headers["x-vary-seed"])
    assert [base64.b64decode(d["b64_json"]) for d in again.json()["data"]] == [
        base64.b64decode(d["b64_json"]) for d in answer.json()["data"]
    ]


def test_what_bedrock_says_reaches_the_client_scrubbed_of_vary_s_credentials_and_cut_short(nova: Nova) -> None:
    secret = "fake-secret-key-for-tests"
    echoed = f"{ACCESS_KEY} {secret} {base64.b64encode(f'{ACCESS_KEY}:{secret}'.encode()).decode()} " + "z" * 16_000
    nova.bedrock.faults.append(("validation", echoed))
    answer = nova.vary.post_variation(size=SIZE)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert ACCESS_KEY not in answer.text and secret not in answer.text
    assert base64.b64encode(secret.encode()).decode()[4:-4] not in answer.text
    assert len(error["message"]) <= 200
