"""fal as a gateway target: `vary serve` against a fake of fal's queue on loopback (tests/fakes/fal.py), checked
first with fal's official Python client (fal-client) over TLS, then driven through vary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import decode_png, png_bytes
from tests.e2e.provider_support import QUICK, eventually, last_row, timed_with_health
from tests.fakes.fal import FakeFal
from tests.fakes.jobs import colour_of
from tests.harness import Running, b64_images, catalogue, hosted, route, serve
from vary.targets.hosted.jobs import data_uri

KEY = "fal-key-SECRET-0123456789abcdef"
SECOND_KEY = "fal-second-SECRET-fedcba9876"
SCHNELL = "fal-ai/flux-1/schnell/redux"
CLIENT_CHECK = """
import asyncio, json, os, sys
import fal_client
from fal_client.client import FalClientHTTPError

async def main():
    client = fal_client.AsyncClient(key=os.environ["FAL_KEY"])
    image = sys.argv[1]
    out = {}
    handle = await client.submit("fal-ai/flux-1/schnell/redux", arguments={"image_url": image, "num_images": 2,
                                 "image_size": "square", "seed": 7, "output_format": "png"})
    out["events"] = [type(event).__name__ async for event in handle.iter_events(interval=0.05)]
    result = await handle.get()
    out["images"] = [(i["width"], i["height"], i["content_type"]) for i in result["images"]]
    out["nsfw"] = result["has_nsfw_concepts"]
    status = await client.status("fal-ai/flux-1/schnell/redux", handle.request_id)
    out["status"] = type(status).__name__
    async with __import__("httpx").AsyncClient() as plain:
        out["file"] = (await plain.get(result["images"][0]["url"])).headers["content-type"]
    try:
        await client.submit("fal-ai/flux-1/schnell/redux", arguments={"image_url": image, "num_images": 9})
    except FalClientHTTPError as exc:
        out["invalid"] = [exc.status_code, exc.message]
    never = await client.submit("fal-ai/flux-1/schnell/redux", arguments={"image_url": image})
    await never.cancel()
    out["cancelled"] = never.request_id
    out["result"] = await client.subscribe("fal-ai/flux-1/dev/redux", arguments={"image_url": image,
                                           "guidance_scale": 3.5, "image_size": "square_hd"}, interval=0.05)
    print(json.dumps(out))

asyncio.run(main())
"""


@dataclass
class Setup:
    running: Running
    fal: FakeFal
    second: FakeFal
    internal: FakeFal  # on 127.0.0.2: a host on vary's internal network, neither fal's nor listed


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    fal, second = FakeFal(key=KEY).start(), FakeFal(key=SECOND_KEY).start()
    internal = FakeFal(key=KEY, host="127.0.0.2").start()
    key_env = "FAKE_FAL_KEY"
    models = [
        hosted("fal", "fal", fal.base_url, key_env=key_env, timeout_seconds=20, **QUICK),
        hosted(
            "fal-dev",
            "fal",
            fal.base_url,
            key_env=key_env,
            timeout_seconds=20,
            output_format="jpeg",
            application="fal-ai/flux-1/dev/redux",
            **QUICK,
        ),
        hosted("fal-as-is", "fal", fal.base_url, key_env=key_env, rehost_urls=False, **QUICK),
        hosted(
            "fal-listed", "fal", fal.base_url, key_env=key_env, download_hosts=[f"127.0.0.2:{internal.port}"], **QUICK
        ),
        hosted("fal-quick", "fal", fal.base_url, key_env=key_env, timeout_seconds=2, max_attempts=1, **QUICK),
        hosted("fal-second", "fal", second.base_url, key_env="FAKE_FAL_SECOND_KEY", timeout_seconds=20, **QUICK),
        route("fal-then-second", ["fal", "fal-second"]),
        route("quick-then-second", ["fal-quick", "fal-second"], deadline_seconds=60),
        route("fal-by-deadline", ["fal"], deadline_seconds=2),
        hosted("old-azure", "azure-openai", "http://127.0.0.1:9", key_env="FAKE_AZURE_KEY", deployment="gone"),
    ]
    env = {key_env: KEY, "FAKE_FAL_SECOND_KEY": SECOND_KEY, "FAKE_AZURE_KEY": "unused"}
    with serve(tmp_path_factory.mktemp("fal"), catalogue=catalogue(*models, default="fal"), env=env) as running:
        yield Setup(running, fal, second, internal)
    for fake in (fal, second, internal):
        fake.stop()


# --- the fake, as fal's own client sees it ---------------------------------------------------------


def test_the_fake_is_fal_s_queue_as_fal_client_sees_it(tmp_path: Path) -> None:
    pytest.importorskip("fal_client", reason="fal-client is in the test extra")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    fake = FakeFal(key=KEY, ca=ca).start(certs=tmp_path)
    fake.fail_seed(0, ("never",))  # the submission without a seed never finishes: the client cancels it
    env = {
        **os.environ,
        "FAL_KEY": KEY,
        "FAL_RUN_HOST": f"127.0.0.1:{fake.port}",
        "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{fake.port}",
        "SSL_CERT_FILE": str(tmp_path / "ca.pem"),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLIENT_CHECK, data_uri(png_bytes(64))],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        fake.stop()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["events"][0] == "Queued" and out["events"][-1] == "Completed"
    assert out["images"] == [[512, 512, "image/png"]] * 2 and out["nsfw"] == [False, False]
    assert out["status"] == "Completed" and out["file"] == "image/png"
    assert (
        out["invalid"][0] == 422 and "num_images" not in out["invalid"][1]
    )  # fal's detail list, as the client reads it
    assert out["cancelled"] in fake.cancels
    assert len(out["result"]["images"]) == 1 and out["result"]["images"][0]["width"] == 1024
    # Every request carried fal's key header, and the status URLs dropped the application's path.
    assert all(s.headers["authorization"] == f"Key {KEY}" for s in fake.submissions)


# --- what vary maps ---------------------------------------------------------------------------------


def test_n_is_split_by_four_with_a_seed_a_call_and_the_size_mapped(setup: Setup) -> None:
    before, image = len(setup.fal.submissions), png_bytes(64)
    answer = setup.running.post_variation(model="fal", image=image, n=6, seed=40, steps=30, guidance_scale=7)
    pngs = b64_images(answer)
    assert [decode_png(png).size for png in pngs] == [(256, 256)] * 6  # made at 512 (square), resized
    assert answer.headers["x-vary-seed"] == "40"
    # In order: call 0 (seed 40) made the first four, call 1 (seed 41) the last two.
    assert [colour_of(png)[:2] for png in pngs] == [(40, 0), (40, 40), (40, 80), (40, 120), (41, 0), (41, 40)]
    bodies = sorted((s.body for s in setup.fal.submissions[before:]), key=lambda body: body["seed"])
    assert [(b["num_images"], b["seed"], b["image_size"], b["num_inference_steps"]) for b in bodies] == [
        (4, 40, "square", 12),  # steps clamped to schnell's 1 to 12
        (2, 41, "square", 12),
    ]
    assert all("guidance_scale" not in body for body in bodies), "schnell takes no guidance_scale"
    assert bodies[0]["image_url"] == data_uri(image) and bodies[0]["enable_safety_checker"] is True


def test_dev_takes_guidance_and_its_jpeg_answer_is_made_a_png(setup: Setup) -> None:
    answer = setup.running.post_variation(model="fal-dev", size="1024x1024", guidance_scale=30, steps=80, seed=3)
    (png,) = b64_images(answer)
    assert decode_png(png).size == (1024, 1024)  # decode_png insists on a PNG
    body = setup.fal.submissions[-1].body
    assert (body["guidance_scale"], body["num_inference_steps"], body["image_size"]) == (20, 50, "square_hd")
    assert body["output_format"] == "jpeg"


def test_models_show_what_fal_honours(setup: Setup) -> None:
    cards = {card["id"]: card for card in setup.running.client().models.list().model_dump()["data"]}
    schnell, dev = cards["fal"]["controls"], cards["fal-dev"]["controls"]
    assert schnell["seed"] is not None and schnell["steps"] is not None
    assert schnell["guidance_scale"] is None and dev["guidance_scale"] is not None
    assert schnell["strength"] is None and schnell["max_images"] == 1
    assert cards["fal"]["owned_by"] == "fal" and setup.fal.base_url not in json.dumps(cards)


def test_several_images_or_a_strength_are_refused_before_fal_is_called(setup: Setup) -> None:
    before = len(setup.fal.submissions)
    several = setup.running.post_variation(model="fal", images=[png_bytes(32), png_bytes(48)])
    assert several.status_code == 400 and several.json()["error"]["param"] == "image"
    strength = setup.running.post_variation(model="fal", strength=0.5)
    assert strength.status_code == 400 and strength.json()["error"]["param"] == "strength"
    assert len(setup.fal.submissions) == before


def test_urls_are_stored_and_signed_by_vary_or_handed_on(setup: Setup) -> None:
    stored = setup.running.post_variation(model="fal", response_format="url").json()["data"][0]["url"]
    assert "/v1/files/" in stored and setup.fal.base_url not in stored
    assert decode_png(httpx.get(stored, timeout=30).content).size == (256, 256)
    handed = setup.running.post_variation(model="fal-as-is", response_format="url").json()["data"][0]["url"]
    assert handed.startswith(f"{setup.fal.base_url}/files/")


# --- fal's own moderation, and its refusals --------------------------------------------------------


def test_a_flagged_image_is_a_content_policy_violation_and_no_fallback(setup: Setup) -> None:
    before = len(setup.second.submissions)
    setup.fal.fail("job", ("nsfw", [1]))
    answer = setup.running.post_variation(model="fal-then-second", n=2)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "content_policy_violation" and "safety system" in error["message"]
    assert len(setup.second.submissions) == before, "moderation is the client's: no other target is tried"
    row = last_row(setup.running.data_dir)
    assert row.unused_images == 2 and row.policy is not None and "has_nsfw_concepts" in row.policy


def test_fal_s_content_check_on_the_input_is_a_content_policy_violation(setup: Setup) -> None:
    setup.fal.fail("job", ("content_policy", "image_url"))
    answer = setup.running.post_variation(model="fal")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "content_policy_violation"
    assert "input image" in answer.json()["error"]["message"]


def test_an_exhausted_balance_is_vary_s_fault_the_next_target_and_a_warning(setup: Setup) -> None:
    setup.fal.locked = True
    try:
        before = len(setup.fal.submissions)
        answer = setup.running.post_variation(model="fal-then-second")
        assert answer.status_code == 200 and answer.headers["x-vary-target"] == "fal-second"
        alone = setup.running.post_variation(model="fal")
        assert alone.status_code == 502 and alone.json()["error"]["code"] == "upstream_unavailable"
        assert len(setup.fal.submissions) == before, "refused before a job: never retried"
    finally:
        setup.fal.locked = False
    assert setup.running.server.wait_for_log("fal refused vary's credentials, credit or configuration (403)")
    assert "Exhausted balance" in setup.running.server.log()


def test_an_input_fal_refuses_is_a_400_with_its_words_and_never_the_key(setup: Setup) -> None:
    setup.fal.fail("submit", ("status", 422, f"image_url could not be read (key {KEY} was used)"))
    answer = setup.running.post_variation(model="fal-then-second")
    assert answer.status_code == 400, answer.text
    assert "could not be read" in answer.json()["error"]["message"] and KEY not in answer.text


# --- retries, time, giving up ----------------------------------------------------------------------


def test_a_429_waits_its_retry_after_and_a_failed_job_is_retried(setup: Setup) -> None:
    setup.fal.fail("submit", ("429", 0))
    setup.fal.fail("job", ("error", 500, "runner crashed"))
    answer = setup.running.post_variation(model="fal")
    assert answer.status_code == 200, answer.text
    assert last_row(setup.running.data_dir).targets_tried == "fal:3"


def test_when_one_call_of_three_fails_only_its_images_are_asked_for_again(setup: Setup) -> None:
    calm = setup.running.post_variation(model="fal", n=10, seed=70)
    before = len(setup.fal.submissions)
    setup.fal.fail_seed(71, ("error", 503, "no runner"))
    answer = setup.running.post_variation(model="fal", n=10, seed=70)
    assert b64_images(answer) == b64_images(calm), "the same images, in the same order"
    seeds = sorted((s.body["seed"], s.body["num_images"]) for s in setup.fal.submissions[before:])
    assert seeds == [(70, 4), (71, 4), (71, 4), (72, 2)], "seeds 70 and 72 are not asked for again"
    row = last_row(setup.running.data_dir)
    assert (row.targets_tried, row.unused_images) == ("fal:2", None)


def test_a_job_past_its_time_is_cancelled_at_fal_and_the_server_keeps_answering(setup: Setup) -> None:
    setup.fal.fail("job", ("never",))
    jobs = len(setup.fal.jobs)
    timed = timed_with_health(setup.running, lambda: setup.running.post_variation(model="fal-quick"))
    assert timed.response is not None and timed.response.status_code == 502
    assert timed.seconds < 60 and 200 in timed.health
    (job,) = list(setup.fal.jobs)[jobs:]
    assert eventually(lambda: job in setup.fal.cancels)


@pytest.mark.parametrize(
    ("model", "status", "target"),
    [("quick-then-second", 200, "fal-second"), ("fal-by-deadline", 502, None)],
    ids=["a-route-moves-on", "past-the-route-s-deadline"],
)
def test_a_job_past_its_attempt_or_the_route_s_time_is_cancelled_at_fal(
    setup: Setup, model: str, status: int, target: str | None
) -> None:
    setup.fal.fail("job", ("never",))
    jobs = len(setup.fal.jobs)
    answer = setup.running.post_variation(model=model)
    assert answer.status_code == status, answer.text
    assert answer.headers.get("x-vary-target") == target
    (job,) = list(setup.fal.jobs)[jobs:]
    assert eventually(lambda: job in setup.fal.cancels)


def test_a_client_that_leaves_has_its_job_cancelled_at_fal(setup: Setup) -> None:
    setup.fal.fail("job", ("never",))
    jobs = len(setup.fal.jobs)
    with pytest.raises(httpx.ReadTimeout):
        setup.running.post_variation(model="fal", timeout=3)
    assert eventually(lambda: len(setup.fal.jobs) > jobs)
    (job,) = list(setup.fal.jobs)[jobs:]
    assert eventually(lambda: job in setup.fal.cancels), "vary saw the client leave and cancelled the job"


# --- results: paid for once, downloaded safely ------------------------------------------------------


def test_a_failed_download_is_retried_never_the_generation(setup: Setup) -> None:
    before, downloads = len(setup.fal.submissions), setup.fal.downloads
    setup.fal.fail("files", ("status", 503))
    assert setup.running.post_variation(model="fal").status_code == 200
    assert (len(setup.fal.submissions) - before, setup.fal.downloads - downloads) == (1, 2)


def test_a_result_that_cannot_be_downloaded_moves_on_and_is_counted_unused(setup: Setup) -> None:
    before = len(setup.fal.submissions)
    setup.fal.fail("files", *[("status", 500)] * 12)
    answer = setup.running.post_variation(model="fal-then-second", n=2)
    assert answer.status_code == 200 and answer.headers["x-vary-target"] == "fal-second"
    assert len(setup.fal.submissions) - before == 1, "paid for once: never generated again"
    setup.fal.faults["files"].clear()
    row = last_row(setup.running.data_dir)
    assert (row.targets_tried, row.unused_images) == ("fal:1,fal-second:1", 2)


def test_a_result_on_another_host_is_refused_unless_listed(setup: Setup) -> None:
    setup.fal.fail("job", ("result_host", setup.internal), ("result_host", setup.internal))
    refused = setup.running.post_variation(model="fal")
    assert refused.status_code == 502 and setup.internal.downloads == 0
    assert setup.running.post_variation(model="fal-listed").status_code == 200
    assert setup.internal.downloads == 1


def test_every_redirect_hop_of_a_download_is_checked(setup: Setup) -> None:
    downloads = setup.internal.downloads
    setup.fal.fail("files", ("redirect", f"{setup.internal.base_url}/files/secret.png"))
    answer = setup.running.post_variation(model="fal")
    assert answer.status_code == 502 and setup.internal.downloads == downloads


def test_a_status_url_on_another_host_never_gets_the_key(setup: Setup) -> None:
    setup.fal.fail("job", ("elsewhere", setup.internal.base_url))
    answer = setup.running.post_variation(model="fal")
    assert answer.status_code == 502
    assert setup.internal.status_polls == 0, "vary sent nothing, and so no key, to a host that is not fal's"


def test_a_retired_provider_in_the_catalogue_is_one_warning_at_start(setup: Setup) -> None:
    lines = [line for line in setup.running.server.log().splitlines() if "old-azure" in line and "retired" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "azure-openai" in lines[0]


def test_the_key_is_in_no_answer_log_or_metric(setup: Setup) -> None:
    metrics = httpx.get(f"{setup.running.base_url}/metrics", timeout=30).text
    models = setup.running.client().models.list().model_dump_json()
    for secret in (KEY, SECOND_KEY):
        assert secret not in setup.running.server.log()
        assert secret not in metrics and secret not in models
