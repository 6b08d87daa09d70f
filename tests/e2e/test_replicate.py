"""Replicate as a gateway target: `vary serve` against a fake of Replicate's predictions API on loopback
(tests/fakes/replicate.py), checked first with Replicate's official Python client, then driven through vary."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import decode_png, png_bytes
from tests.e2e.provider_support import QUICK, eventually, last_row, timed_with_health
from tests.fakes.jobs import colour_of
from tests.fakes.replicate import FakeReplicate
from tests.harness import Running, b64_images, catalogue, hosted, route, serve
from vary.targets.hosted.jobs import data_uri

KEY = "r8_SECRET_replicate_0123456789abcdefABCDEF"
SECOND_KEY = "r8_SECRET_second_fedcba"
SCHNELL = "black-forest-labs/flux-redux-schnell"


@dataclass
class Setup:
    running: Running
    replicate: FakeReplicate
    second: FakeReplicate
    internal: FakeReplicate  # on 127.0.0.2: a host that is not Replicate's


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    replicate, second = FakeReplicate(key=KEY).start(), FakeReplicate(key=SECOND_KEY).start()
    internal = FakeReplicate(key=KEY, host="127.0.0.2").start()
    api, env_name = f"{replicate.base_url}/v1", "FAKE_REPLICATE_KEY"
    models = [
        hosted("replicate", "replicate", api, key_env=env_name, timeout_seconds=20, **QUICK),
        hosted(
            "replicate-dev",
            "replicate",
            api,
            key_env=env_name,
            timeout_seconds=20,
            output_format="webp",
            upstream_model="black-forest-labs/flux-redux-dev",
            **QUICK,
        ),
        hosted("replicate-as-is", "replicate", api, key_env=env_name, rehost_urls=False, **QUICK),
        hosted("replicate-quick", "replicate", api, key_env=env_name, timeout_seconds=2, max_attempts=1, **QUICK),
        hosted("replicate-second", "replicate", f"{second.base_url}/v1", key_env="FAKE_SECOND_KEY", **QUICK),
        route("replicate-then-second", ["replicate", "replicate-second"]),
    ]
    env = {env_name: KEY, "FAKE_SECOND_KEY": SECOND_KEY}
    root = tmp_path_factory.mktemp("replicate")
    with serve(root, catalogue=catalogue(*models, default="replicate"), env=env) as running:
        yield Setup(running, replicate, second, internal)
    for fake in (replicate, second, internal):
        fake.stop()


# --- the fake, as Replicate's own client sees it ----------------------------------------------------


def test_the_fake_is_replicate_s_predictions_api_as_its_client_sees_it(tmp_path: Path) -> None:
    replicate = pytest.importorskip("replicate", reason="replicate is in the test extra")
    ca = trustme.CA()  # https, as Replicate serves: the client reads only https outputs as files
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    fake = FakeReplicate(key=KEY, ca=ca).start(certs=tmp_path)
    try:
        client = replicate.Client(api_token=KEY, base_url=fake.base_url, transport=httpx.HTTPTransport(verify=trusted))
        image = data_uri(png_bytes(64))
        given = {"redux_image": image, "num_outputs": 2, "megapixels": "0.25", "output_format": "png", "seed": 5}
        outputs = client.run(SCHNELL, input=given)
        assert [decode_png(output.read()).size for output in outputs] == [(512, 512)] * 2
        assert fake.created[-1][2]["prefer"] == "wait"  # the client's own synchronous wait
        with pytest.raises(replicate.exceptions.ReplicateError) as invalid:
            client.run(SCHNELL, input={"redux_image": image, "num_outputs": 9})
        assert invalid.value.status == 422 and "num_outputs" in str(invalid.value.detail)
        fake.fail("job", ("nsfw", 1))
        with pytest.raises(replicate.exceptions.ModelError) as flagged:
            client.run(SCHNELL, input={"redux_image": image})
        assert "NSFW" in str(flagged.value.prediction.error)
        fake.fail("job", ("never",))
        prediction = client.models.predictions.create(model=SCHNELL, input={"redux_image": image})
        prediction.cancel()
        assert prediction.status == "canceled" and prediction.id in fake.cancels
        prediction.reload()
        assert prediction.status == "canceled" and prediction.urls["cancel"].endswith("/cancel")
        wrong = replicate.Client(
            api_token="r8_wrong", base_url=fake.base_url, transport=httpx.HTTPTransport(verify=trusted)
        )
        with pytest.raises(replicate.exceptions.ReplicateError) as unauthenticated:
            wrong.run(SCHNELL, input={"redux_image": image})
        assert unauthenticated.value.status == 401
    finally:
        fake.stop()


# --- what vary maps ---------------------------------------------------------------------------------


def test_n_is_split_by_four_sizes_are_megapixels_and_the_wait_is_within_the_attempt(setup: Setup) -> None:
    before, image = len(setup.replicate.created), png_bytes(64)
    answer = setup.running.post_variation(model="replicate", image=image, n=6, seed=40, steps=30, guidance_scale=7)
    pngs = b64_images(answer)
    assert [decode_png(png).size for png in pngs] == [(256, 256)] * 6 and answer.headers["x-vary-seed"] == "40"
    assert [colour_of(png)[:2] for png in pngs] == [(40, 0), (40, 40), (40, 80), (40, 120), (41, 0), (41, 40)]
    created = sorted(setup.replicate.created[before:], key=lambda entry: entry[1]["input"]["seed"])
    inputs = [body["input"] for _, body, _ in created]
    assert [(i["num_outputs"], i["seed"], i["megapixels"], i["num_inference_steps"]) for i in inputs] == [
        (4, 40, "0.25", 4),  # steps clamped to schnell's 1 to 4
        (2, 41, "0.25", 4),
    ]
    assert all("guidance" not in i for i in inputs) and inputs[0]["redux_image"] == data_uri(image)
    assert inputs[0]["aspect_ratio"] == "1:1" and inputs[0]["disable_safety_checker"] is False
    waits = [int(headers["prefer"].removeprefix("wait=")) for _, _, headers in created]
    assert all(1 <= wait <= 10 for wait in waits), "never longer than half the attempt's 20 s"
    assert all(headers["authorization"] == f"Bearer {KEY}" for _, _, headers in created)


def test_dev_takes_guidance_and_its_webp_answer_is_made_a_png(setup: Setup) -> None:
    answer = setup.running.post_variation(model="replicate-dev", size="1024x1024", guidance_scale=30, steps=80)
    (png,) = b64_images(answer)
    assert decode_png(png).size == (1024, 1024)
    given = setup.replicate.created[-1][1]["input"]
    assert (given["guidance"], given["num_inference_steps"], given["megapixels"]) == (10, 50, "1")
    assert given["output_format"] == "webp"


def test_a_prediction_longer_than_the_wait_is_polled(setup: Setup) -> None:
    gets = setup.replicate.gets
    setup.replicate.run_seconds = 12.0  # past the create's wait (at most 10 s of the attempt's 20): polled
    try:
        answer = setup.running.post_variation(model="replicate")
    finally:
        setup.replicate.run_seconds = 0.2
    assert answer.status_code == 200, answer.text
    assert setup.replicate.gets > gets


def test_urls_are_handed_on_as_replicate_gave_them_when_asked(setup: Setup) -> None:
    handed = setup.running.post_variation(model="replicate-as-is", response_format="url").json()["data"][0]["url"]
    assert handed.startswith(f"{setup.replicate.base_url}/files/")


# --- moderation and refusals ------------------------------------------------------------------------


def test_a_prediction_failed_as_nsfw_is_a_content_policy_violation_without_fallback(setup: Setup) -> None:
    before = len(setup.second.created)
    setup.replicate.fail("job", ("nsfw", 1))
    answer = setup.running.post_variation(model="replicate-then-second")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "content_policy_violation"
    assert len(setup.second.created) == before


def test_images_the_safety_checker_dropped_are_a_content_policy_violation(setup: Setup) -> None:
    setup.replicate.fail("job", ("nsfw", 1))
    answer = setup.running.post_variation(model="replicate", n=3)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "content_policy_violation"
    assert last_row(setup.running.data_dir).unused_images == 2, "the two images made were billed"


def test_no_credit_is_vary_s_fault_with_a_warning_naming_replicate(setup: Setup) -> None:
    setup.replicate.no_credit = True
    try:
        routed = setup.running.post_variation(model="replicate-then-second")
        alone = setup.running.post_variation(model="replicate")
    finally:
        setup.replicate.no_credit = False
    assert routed.status_code == 200 and routed.headers["x-vary-target"] == "replicate-second"
    assert alone.status_code == 502 and "credit" not in alone.text.lower()
    assert setup.running.server.wait_for_log("replicate refused vary's credentials, credit or configuration (402)")


def test_an_invalid_input_is_a_400_naming_the_image(setup: Setup) -> None:
    setup.replicate.fail("create", ("invalid", "redux_image", f"Does not match format 'uri' ({KEY})"))
    answer = setup.running.post_variation(model="replicate")
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "image" and "format 'uri'" in error["message"] and KEY not in answer.text


# --- retries and giving up ----------------------------------------------------------------------------


def test_throttling_and_a_failed_prediction_are_retried(setup: Setup) -> None:
    setup.replicate.fail("create", ("429", 0))
    setup.replicate.fail("job", ("failed", "CUDA out of memory"))
    answer = setup.running.post_variation(model="replicate")
    assert answer.status_code == 200, answer.text
    assert last_row(setup.running.data_dir).targets_tried == "replicate:3"


def test_a_prediction_past_its_time_is_cancelled_through_its_cancel_url(setup: Setup) -> None:
    setup.replicate.fail("job", ("never",))
    count = len(setup.replicate.predictions)
    timed = timed_with_health(setup.running, lambda: setup.running.post_variation(model="replicate-quick"))
    assert timed.response is not None and timed.response.status_code == 502
    assert timed.seconds < 60 and 200 in timed.health
    (prediction,) = list(setup.replicate.predictions)[count:]
    assert eventually(lambda: prediction in setup.replicate.cancels)
    assert setup.replicate.predictions[prediction].canceled


def test_a_client_that_leaves_has_its_prediction_cancelled(setup: Setup) -> None:
    setup.replicate.fail("job", ("never",))
    count = len(setup.replicate.predictions)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        setup.running.post_variation(model="replicate", timeout=4)
    assert time.monotonic() - started < 60
    assert eventually(lambda: len(setup.replicate.predictions) > count)
    (prediction,) = list(setup.replicate.predictions)[count:]
    assert eventually(lambda: prediction in setup.replicate.cancels)


def test_urls_on_another_host_never_get_the_key(setup: Setup) -> None:
    setup.replicate.fail("job", ("elsewhere", setup.internal.base_url))
    setup.replicate.run_seconds = 30.0  # still running when the create's wait ends: its get URL is needed
    try:
        answer = setup.running.post_variation(model="replicate-quick")
    finally:
        setup.replicate.run_seconds = 0.2
    assert answer.status_code == 502
    assert setup.internal.gets == 0 and not setup.internal.cancels


def test_the_key_is_in_no_answer_log_or_metric(setup: Setup) -> None:
    metrics = httpx.get(f"{setup.running.base_url}/metrics", timeout=30).text
    for secret in (KEY, SECOND_KEY):
        assert secret not in setup.running.server.log() and secret not in metrics
