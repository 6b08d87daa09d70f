"""The content policy end to end: a live tiny-random server whose routes carry their own [models.safety],
the built-in open-nsfw classifier (threshold 0: every image crosses it), a guardrail on loopback, a hosted
provider on loopback, driven by the official openai SDK and raw HTTP. Nothing about a classifier may
reach a client; the usage rows, the log and the metrics say what happened."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.fakes.guardrail import FakeGuardrail
from tests.fakes.providers import FakeProvider
from tests.harness import Running, catalogue, hosted, local, metrics, png_bytes, route, serve, usage_rows_until
from vary.errors import FLAGGED_INPUT_MESSAGE, FLAGGED_OUTPUT_MESSAGE
from vary.state.database import Database
from vary.state.schema import UsageRow
from vary.testing import free_port

SECRET = "sk-fake-provider-secret"
WAIT_S = 120
SKIN = (200, 140, 110)  # a colour open-nsfw scores about 0.29; white scores about 0.01
SKIN_THRESHOLD = 0.15
DEADLINE_S = 6.0  # hosted-regenerated's route deadline, for all its rounds
ROUND_S = 4.0  # what each of its provider calls takes, in the deadline test


def config(guard: str, down: str, provider: FakeProvider) -> str:
    def checked(name: str, to: str = "base", **safety: object) -> dict[str, object]:
        return route(name, [to], safety=safety)

    regenerate = {"on_flagged_output": "regenerate"}
    up = f"{provider.base_url}/v1"
    return catalogue(
        local("base"),
        hosted("up", "openai-compatible", up, key_env="FAKE_OPENAI_KEY", upstream_model="dall-e-2"),
        checked("input-flagged", check="input", threshold=0),
        checked("output-refused", check="output", threshold=0),
        checked("output-regenerated", check="output", threshold=0, **regenerate, max_regenerations=2),
        checked("checked", check="both"),
        checked("guard-block", check="input", classifier=f"{guard}/block"),
        checked("guard-once", check="output", classifier=f"{guard}/block-once", **regenerate, max_regenerations=1),
        checked("guard-down", check="input", classifier=down),
        checked("guard-down-open", check="input", classifier=down, fail="open"),
        checked("guard-slow", check="input", classifier=f"{guard}/slow", timeout_seconds=0.5),
        checked("guard-garbage", check="output", classifier=f"{guard}/garbage"),
        checked("hosted-refused", "up", check="output", threshold=0),
        # Every output flagged, each round a provider call that takes ROUND_S, within one deadline
        route(
            "hosted-regenerated",
            ["up"],
            deadline_seconds=DEADLINE_S,
            safety={"check": "output", "threshold": 0, **regenerate, "max_regenerations": 2},
        ),
        # open-nsfw scores a skin-coloured square about 0.29, a white one about 0.01
        checked("hosted-input-checked", "up", check="input", threshold=SKIN_THRESHOLD),
        default="base",
    )


@pytest.fixture(scope="module")
def guardrail() -> Iterator[FakeGuardrail]:
    with FakeGuardrail() as fake:
        yield fake


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(key=SECRET) as fake:
        yield fake


@pytest.fixture(scope="module")
def safety_server(
    tmp_path_factory: pytest.TempPathFactory, guardrail: FakeGuardrail, provider: FakeProvider
) -> Iterator[Running]:
    down = f"http://127.0.0.1:{free_port()}/guard"  # nothing listens there
    models = config(guardrail.base_url, down, provider)
    env = {"FAKE_OPENAI_KEY": SECRET}
    with serve(tmp_path_factory.mktemp("safety"), catalogue=models, env=env, admin=True) as vary:
        yield vary


@pytest.fixture(scope="module")
def client(safety_server: Running) -> OpenAI:
    return safety_server.client()


def generated(vary: Running) -> float:
    return metrics(vary.base_url).get(("vary_images_generated_total", (("model", "base"),)), 0.0)


def checks(vary: Running, stage: str, outcome: str) -> float:
    return metrics(vary.base_url).get(("vary_safety_checks_total", (("outcome", outcome), ("stage", stage))), 0.0)


def usage_row(vary: Running, request_id: str) -> UsageRow:
    def mine(rows: list[UsageRow]) -> list[UsageRow]:
        return [row for row in rows if row.request_id == request_id]

    rows = mine(usage_rows_until(vary.data_dir, lambda rows: bool(mine(rows)), timeout=WAIT_S))
    assert rows, "no usage row"
    return rows[0]


def assert_nothing_leaks(response: httpx.Response, *secrets: str) -> None:
    text = response.text.lower()
    for word in ("open-nsfw", "nsfw", "score", "guardrail", "threshold", "127.0.0.1", "hf:", *secrets):
        assert word.lower() not in text, f"{word!r} leaked: {response.text}"


def test_a_flagged_input_is_openais_400_and_costs_no_model_work(safety_server: Running) -> None:
    vary = safety_server
    before, flagged_before = generated(vary), checks(vary, "input", "flagged")
    response = vary.post_variation(model="input-flagged", n=3)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "content_policy_violation",
            "type": "invalid_request_error",
            "param": None,
            "message": FLAGGED_INPUT_MESSAGE,
        }
    }
    assert_nothing_leaks(response)
    assert generated(vary) == before  # the model never ran
    assert checks(vary, "input", "flagged") == flagged_before + 1
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.status == 400
    assert row.policy is not None and "input flagged by open-nsfw" in row.policy and "score" in row.policy
    assert vary.server.wait_for_log("input flagged by open-nsfw")  # the access log line carries the audit too


def test_the_openai_sdk_raises_bad_request_with_the_content_policy_code(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(image=png_bytes(64), model="input-flagged", size="256x256")
    assert refused.value.code == "content_policy_violation"
    assert refused.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as refused_output:
        client.images.create_variation(image=png_bytes(64), model="output-refused", size="256x256")
    assert refused_output.value.code == "content_policy_violation"
    assert FLAGGED_OUTPUT_MESSAGE in str(refused_output.value)


def test_flagged_outputs_are_refused_as_a_whole(safety_server: Running) -> None:
    vary = safety_server
    before = generated(vary)
    response = vary.post_variation(model="output-refused", n=2)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"], error["message"]) == (
        "content_policy_violation",
        "invalid_request_error",
        FLAGGED_OUTPUT_MESSAGE,
    )
    assert_nothing_leaks(response)
    assert generated(vary) == before + 2  # made once, checked as one batch, never regenerated
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.status == 400 and row.policy is not None and "output flagged by open-nsfw" in row.policy


def test_flagged_outputs_are_regenerated_then_refused(safety_server: Running) -> None:
    vary = safety_server
    before, output_checks = generated(vary), checks(vary, "output", "flagged")
    response = vary.post_variation(model="output-regenerated", n=2)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == FLAGGED_OUTPUT_MESSAGE
    assert_nothing_leaks(response)
    assert generated(vary) == before + 2 * 3  # the first batch and two regenerations of both images
    assert checks(vary, "output", "flagged") == output_checks + 3
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.policy is not None and "after 2 regenerations" in row.policy


def test_regenerated_images_take_room_in_the_images_window(safety_server: Running) -> None:
    """n=1 and two regenerations make three images: a key allowed two a minute gets its 429 before the third is
    made, and the window is spent."""
    vary = safety_server
    _, key = vary.new_key("limited", images_per_minute=2)
    before = generated(vary)
    response = vary.post_variation(key, model="output-regenerated", n=1)
    assert response.status_code == 429, response.text
    assert "images per min" in response.json()["error"]["message"]
    assert generated(vary) == before + 2, "the third image was never made"
    assert vary.post_variation(key, model="base").status_code == 429, "the two made took the minute's room"


def test_regenerated_images_count_toward_the_quota(safety_server: Running) -> None:
    vary = safety_server
    _, key = vary.new_key("limited", image_quota=3)
    response = vary.post_variation(key, model="output-regenerated", n=1)  # three images made, none delivered
    assert response.status_code == 400, response.text
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.unused_images == 3, "made and never given to the client"
    refused = vary.post_variation(key, model="base")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"


def test_one_deadline_bounds_every_regeneration_round(safety_server: Running, provider: FakeProvider) -> None:
    """Each round is a provider call of ROUND_S; with a fresh deadline for each, three rounds (12 s) were made.
    One deadline of DEADLINE_S for them all cuts the second round short and makes no third."""
    vary = safety_server
    calls = len(provider.calls_to("openai"))
    provider.fail("openai", *[("delay", ROUND_S)] * 3)
    started = time.monotonic()
    response = vary.post_variation(model="hosted-regenerated", n=1)
    elapsed = time.monotonic() - started
    provider.faults["openai"].clear()
    assert response.status_code in (400, 502), response.text
    assert len(provider.calls_to("openai")) - calls <= 2
    assert elapsed < DEADLINE_S + ROUND_S / 2, f"{elapsed:.1f}s for a deadline of {DEADLINE_S}s"


def test_a_regenerated_batch_that_passes_is_answered(safety_server: Running, guardrail: FakeGuardrail) -> None:
    vary = safety_server
    before = generated(vary)
    response = vary.post_variation(model="guard-once", n=2)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert generated(vary) == before + 4  # blocked once: both images made again, then passed
    sent = guardrail.calls("/block-once")
    assert [body["input_type"] for body in sent] == ["response", "response"]
    assert [len(body["images"]) for body in sent] == [2, 2]
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.status == 200 and row.policy is not None and "passed after 1 regeneration" in row.policy


def test_checked_images_that_pass_are_answered_with_a_safety_stage(safety_server: Running) -> None:
    vary = safety_server
    response = vary.post_variation(model="checked", n=2)
    assert response.status_code == 200, response.text
    assert "safety;dur=" in response.headers["server-timing"]
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.policy is not None and "input passed open-nsfw" in row.policy and "output passed" in row.policy
    # The safety stage is a stage of the request's metrics too.
    stages = metrics(vary.base_url)
    assert stages[("vary_request_stage_seconds_count", (("model", "checked"), ("stage", "safety")))] >= 1


def test_a_guardrail_that_blocks_the_input(safety_server: Running, guardrail: FakeGuardrail) -> None:
    vary = safety_server
    before = generated(vary)
    response = vary.post_variation(model="guard-block")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == FLAGGED_INPUT_MESSAGE
    assert_nothing_leaks(response, "blocks everything")
    assert generated(vary) == before
    assert guardrail.calls("/block")[-1]["input_type"] == "request"
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.policy is not None and "flagged by guardrail" in row.policy and "BLOCKED" in row.policy


@pytest.mark.parametrize("model", ["guard-down", "guard-slow", "guard-garbage"])
def test_a_guardrail_down_slow_or_answering_garbage_fails_closed_as_503(safety_server: Running, model: str) -> None:
    vary = safety_server
    failed = checks(vary, "output" if model == "guard-garbage" else "input", "failed_closed")
    response = vary.post_variation(model=model)
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "safety_unavailable")
    assert_nothing_leaks(response, "/guard", "/slow", "/garbage")
    assert checks(vary, "output" if model == "guard-garbage" else "input", "failed_closed") == failed + 1
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.status == 503 and row.policy is not None and "could not run" in row.policy


def test_a_guardrail_that_is_down_fails_open_when_told_to(safety_server: Running) -> None:
    vary = safety_server
    response = vary.post_variation(model="guard-down-open")
    assert response.status_code == 200, response.text
    row = usage_row(vary, response.headers["x-request-id"])
    assert row.policy is not None and "fail open" in row.policy


def test_a_hosted_providers_images_are_checked_too(safety_server: Running, provider: FakeProvider) -> None:
    vary = safety_server
    calls = len(provider.calls_to("openai"))
    response = vary.post_variation(model="hosted-refused")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == FLAGGED_OUTPUT_MESSAGE
    assert_nothing_leaks(response)
    assert len(provider.calls_to("openai")) == calls + 1


@pytest.mark.parametrize(
    ("hidden", "mode"),
    [((*SKIN, 0), "RGBA"), ((*SKIN, 12), "RGBA"), ((*SKIN,), "P-transparent")],
    ids=["clear", "nearly-clear", "palette-transparency"],
)
def test_a_transparent_input_cannot_hide_from_the_check_what_a_provider_is_sent(
    safety_server: Running, provider: FakeProvider, hidden: tuple[int, ...], mode: str
) -> None:
    """The provider gets the PNG's bytes, pixels under its transparency included, and may drop the alpha or
    composite on any background: the check classifies every such view, not only the image on white."""
    vary = safety_server
    if mode == "P-transparent":  # a palette image whose one colour is marked transparent (a tRNS chunk)
        image = _palette_png(hidden)
    else:
        image = png_bytes(64, "RGBA", hidden)
    calls = len(provider.calls_to("openai"))
    refused = vary.post_variation(model="hosted-input-checked", n=1, image=image)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "content_policy_violation"
    assert len(provider.calls_to("openai")) == calls, "the provider was called with a flagged input"
    passed = vary.post_variation(model="hosted-input-checked", n=1, image=png_bytes(64, "RGBA", (255, 255, 255, 0)))
    assert passed.status_code == 200, passed.text


def _palette_png(colour: tuple[int, ...]) -> bytes:
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([*colour[:3]] * 256)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def test_an_operator_turns_the_checks_off_for_a_trusted_key(safety_server: Running) -> None:
    vary, admin = safety_server, safety_server.admin
    trusted_id, trusted_key = vary.new_key("trusted internal")
    assert vary.post_variation(trusted_key, model="input-flagged").status_code == 400

    def patch(body: object, key: str = admin, key_id: str = trusted_id) -> httpx.Response:
        return httpx.patch(
            f"{vary.base_url}/v1/admin/keys/{key_id}",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
            timeout=WAIT_S,
        )

    assert patch({"safety": "off"}, key=trusted_key).status_code == 403  # only an admin key may
    changed = patch({"safety": "off"})
    assert changed.status_code == 200 and changed.json()["safety"] == "off"
    response = vary.post_variation(trusted_key, model="input-flagged")
    assert response.status_code == 200, response.text
    assert usage_row(vary, response.headers["x-request-id"]).policy is None
    listed = httpx.get(
        f"{vary.base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S
    ).json()
    assert {k["id"]: k["safety"] for k in listed["data"]}[trusted_id] == "off"
    assert "key_hash" not in json.dumps(listed)

    assert patch({"safety": None}).json()["safety"] is None
    assert vary.post_variation(trusted_key, model="input-flagged").status_code == 400
    assert patch({"safety": "sometimes"}).status_code == 400
    assert patch({"safety": "off"}, key_id="nosuchkey").status_code == 404


def test_vary_keys_turns_the_checks_off_and_on(tmp_path: Path) -> None:
    def vary(*args: str) -> str:
        command = [sys.executable, "-m", "vary", "keys", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=WAIT_S).stdout

    vary("create", "--name", "internal", "--safety", "off")
    db = Database.open(tmp_path / "vary.db")
    try:
        [key] = db.list_keys()
    finally:
        db.close()
    assert key.safety == "off" and not key.checks_content
    assert "safety=off" in vary("list")
    vary("update", key.id, "--safety", "default")
    db = Database.open(tmp_path / "vary.db")
    try:
        assert db.list_keys()[0].checks_content
    finally:
        db.close()


def test_a_classifier_that_cannot_be_used_stops_the_start_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vary", "serve", "--model", "tiny-random", "--data-dir", str(tmp_path / "d")]
    env = {**os.environ, "VARY_SAFETY_CHECK": "input", "VARY_SAFETY_CLASSIFIER": f"hf:{tmp_path / 'no-model'}"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, env=env)
    assert done.returncode != 0
    assert "vary: the content policy's classifier cannot be used" in done.stderr
    assert "Traceback" not in done.stderr
