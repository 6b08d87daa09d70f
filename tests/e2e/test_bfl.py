"""Black Forest Labs as a gateway target: `vary serve` against a fake of BFL's API on loopback (tests/fakes/bfl.py),
checked first with raw HTTP as BFL documents it (BFL has no official Python client), then driven through vary,
with traces exported to a real OTLP receiver so that no span carries the key or a signed result URL."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from tests.conftest import decode_png, png_bytes
from tests.e2e.provider_support import QUICK, last_row
from tests.fakes.bfl import FakeBfl
from tests.fakes.jobs import colour_of
from tests.fakes.otlp import HttpReceiver
from tests.harness import Running, b64_images, catalogue, hosted, route, serve

KEY = "bfl-SECRET-key-0123456789-abcdef"
SECOND_KEY = "bfl-SECRET-second-9876"


@dataclass
class Setup:
    running: Running
    bfl: FakeBfl
    second: FakeBfl
    internal: FakeBfl  # on 127.0.0.2: a host that is not BFL's
    receiver: HttpReceiver


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    bfl, second = FakeBfl(key=KEY).start(), FakeBfl(key=SECOND_KEY).start()
    internal = FakeBfl(key=KEY, host="127.0.0.2").start()
    receiver = HttpReceiver()
    api, env_name = f"{bfl.base_url}/v1", "FAKE_BFL_KEY"
    models = [
        hosted("bfl", "bfl", api, key_env=env_name, timeout_seconds=20, **QUICK),
        hosted(
            "bfl-ultra",
            "bfl",
            api,
            key_env=env_name,
            timeout_seconds=20,
            upstream_model="flux-pro-1.1-ultra",
            output_format="jpeg",
            **QUICK,
        ),
        hosted("bfl-second", "bfl", f"{second.base_url}/v1", key_env="FAKE_SECOND_KEY", **QUICK),
        route("bfl-then-second", ["bfl", "bfl-second"]),
    ]
    env = {
        env_name: KEY,
        "FAKE_SECOND_KEY": SECOND_KEY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with serve(tmp_path_factory.mktemp("bfl"), catalogue=catalogue(*models, default="bfl"), env=env) as running:
        yield Setup(running, bfl, second, internal, receiver)
    for fake in (bfl, second, internal):
        fake.stop()
    receiver.stop()


# --- the fake, as BFL documents its API ------------------------------------------------------------


def test_the_fake_answers_as_bfl_documents_its_api() -> None:
    fake = FakeBfl(key=KEY).start()
    try:
        with httpx.Client(base_url=fake.base_url, headers={"x-key": KEY}, timeout=30) as http:
            image = base64.b64encode(png_bytes(64)).decode()
            task = http.post(
                "/v1/flux-pro-1.1", json={"prompt": "", "image_prompt": image, "width": 512, "height": 512}
            )
            assert task.status_code == 200 and set(task.json()) >= {"id", "polling_url"}
            answers = [http.get(task.json()["polling_url"]).json() for _ in range(2)]
            assert [answer["status"] for answer in answers] == ["Pending", "Ready"]
            sample = answers[-1]["result"]["sample"]
            assert "se=" in sample and "sig=" in sample
            assert size_of(httpx.get(sample, timeout=30).content) == (512, 512)  # BFL's JPEG; no key: it is signed
            assert httpx.get(sample.replace("sig=", "sig=0"), timeout=30).status_code == 403
            invalid = http.post("/v1/flux-pro-1.1", json={"prompt": "", "width": 300})
            assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "width"]
            ultra = http.post(
                "/v1/flux-pro-1.1-ultra", json={"prompt": "", "image_prompt": image, "aspect_ratio": "1:1"}
            )
            polled = [http.get(ultra.json()["polling_url"]).json() for _ in range(2)][-1]
            assert size_of(httpx.get(polled["result"]["sample"], timeout=30).content) == (2048, 2048)
        assert httpx.post(f"{fake.base_url}/v1/flux-pro-1.1", json={}, headers={"x-key": "wrong"}).status_code == 403
    finally:
        fake.stop()


def size_of(data: bytes) -> tuple[int, int]:
    size: tuple[int, int] = Image.open(io.BytesIO(data)).size
    return size


# --- what vary maps ---------------------------------------------------------------------------------


def test_n_is_one_task_an_image_each_with_its_seed_and_the_size_as_asked(setup: Setup) -> None:
    before, image = len(setup.bfl.submitted), png_bytes(64)
    answer = setup.running.post_variation(model="bfl", image=image, n=3, size="512x512", seed=9, steps=30)
    pngs = b64_images(answer)
    assert [decode_png(png).size for png in pngs] == [(512, 512)] * 3 and answer.headers["x-vary-seed"] == "9"
    assert [colour_of(png)[0] for png in pngs] == [9, 10, 11]
    submitted = sorted(setup.bfl.submitted[before:], key=lambda entry: entry[1]["seed"])
    assert [(model, body["seed"], body["width"], body["height"]) for model, body, _ in submitted] == [
        ("flux-pro-1.1", seed, 512, 512) for seed in (9, 10, 11)
    ]
    body, headers = submitted[0][1], submitted[0][2]
    assert body["prompt"] == "" and base64.b64decode(body["image_prompt"]) == image
    assert headers["x-key"] == KEY and "steps" not in body, "flux-pro-1.1 has no steps: ignored"


def test_ultra_maps_strength_onto_the_image_prompt_s_and_is_resized(setup: Setup) -> None:
    (png,) = b64_images(setup.running.post_variation(model="bfl-ultra", strength=0.5))
    assert decode_png(png).size == (256, 256)  # made at 2048, a JPEG, made a PNG of the asked size
    body = setup.bfl.submitted[-1][1]
    assert (body["aspect_ratio"], body["image_prompt_strength"], body["raw"]) == ("1:1", 0.55, False)
    assert "width" not in body
    b64_images(setup.running.post_variation(model="bfl-ultra"))
    assert setup.bfl.submitted[-1][1]["image_prompt_strength"] == 0.1  # the option, without a strength


def test_strength_is_refused_before_a_task_where_the_model_has_none(setup: Setup) -> None:
    before = len(setup.bfl.submitted)
    answer = setup.running.post_variation(model="bfl", strength=0.5)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "strength"
    cards = {card["id"]: card for card in setup.running.client().models.list().model_dump()["data"]}
    assert cards["bfl"]["controls"]["strength"] is None and cards["bfl-ultra"]["controls"]["strength"] is not None
    assert cards["bfl"]["controls"]["steps"] is None and cards["bfl"]["controls"]["guidance_scale"] is None
    assert len(setup.bfl.submitted) == before


# --- moderation and refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "words"), [("request_moderated", "input image"), ("content_moderated", "generated")])
def test_bfl_s_moderation_is_a_content_policy_violation_without_fallback(setup: Setup, fault: str, words: str) -> None:
    before = len(setup.second.submitted)
    setup.bfl.fail("job", (fault,))
    answer = setup.running.post_variation(model="bfl-then-second")
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "content_policy_violation" and words in error["message"]
    assert len(setup.second.submitted) == before
    assert "BFL moderated" in (last_row(setup.running.data_dir).policy or "")


def test_no_credit_moves_on_with_a_warning_naming_bfl(setup: Setup) -> None:
    setup.bfl.no_credit = True
    try:
        answer = setup.running.post_variation(model="bfl-then-second")
    finally:
        setup.bfl.no_credit = False
    assert answer.status_code == 200 and answer.headers["x-vary-target"] == "bfl-second"
    assert setup.running.server.wait_for_log("bfl refused vary's credentials, credit or configuration (402)")


def test_the_active_task_limit_waits_and_a_failed_task_is_retried(setup: Setup) -> None:
    setup.bfl.fail("submit", ("429", 0))
    setup.bfl.fail("job", ("error",))
    assert setup.running.post_variation(model="bfl").status_code == 200
    assert last_row(setup.running.data_dir).targets_tried == "bfl:3"


def test_a_polling_url_on_another_host_never_gets_the_key(setup: Setup) -> None:
    setup.bfl.fail("job", ("elsewhere", setup.internal.base_url))
    answer = setup.running.post_variation(model="bfl")
    assert answer.status_code == 502 and setup.internal.polls == 0


def test_a_sample_past_its_expiry_is_never_generated_again_and_moves_on(setup: Setup) -> None:
    before = len(setup.bfl.submitted)
    setup.bfl.url_ttl_seconds = -60.0  # signed URLs already expired: each download is 403
    try:
        answer = setup.running.post_variation(model="bfl-then-second")
    finally:
        setup.bfl.url_ttl_seconds = 600.0
    assert answer.status_code == 200 and answer.headers["x-vary-target"] == "bfl-second"
    assert len(setup.bfl.submitted) - before == 1, "the task is paid for: never submitted again"
    assert last_row(setup.running.data_dir).unused_images == 1


# --- secrets ---------------------------------------------------------------------------------------


def test_no_key_or_signed_url_in_an_answer_a_log_line_a_metric_or_a_span(setup: Setup) -> None:
    answers = [setup.running.post_variation(model="bfl", n=2).text]
    setup.bfl.fail("files", ("status", 500), ("status", 500), ("status", 500))
    answers.append(setup.running.post_variation(model="bfl").text)  # a download that keeps failing
    setup.bfl.fail("submit", ("status", 422))
    answers.append(setup.running.post_variation(model="bfl").text)
    spans = setup.receiver.wait_for(lambda spans: sum(s.name == "vary.provider.job" for s in spans) >= 4)
    assert {span.attributes.get("vary.provider") for span in spans if span.name == "vary.provider.job"} == {"bfl"}
    exported = json.dumps([(s.name, s.attributes, s.status_message) for s in spans], default=str)
    metrics = httpx.get(f"{setup.running.base_url}/metrics", timeout=30).text
    log = setup.running.server.log()
    signatures = [sample.split("sig=", 1)[1] for sample in setup.bfl.samples]
    assert signatures, "the fake handed out signed URLs"
    for secret in (KEY, SECOND_KEY, *setup.bfl.samples, *signatures):
        for where, text in (("answer", "".join(answers)), ("log", log), ("metrics", metrics), ("span", exported)):
            assert secret not in text, f"a secret in a {where}"
