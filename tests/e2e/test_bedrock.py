"""Nova Canvas on Bedrock through boto3, against a fake Bedrock runtime on loopback that checks SigV4's scope."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.fakes.bedrock import FakeBedrock
from tests.harness import aws_env, catalogue, decode_png, hosted, png_bytes, serve
from vary.errors import UpstreamFailure
from vary.imaging import InputImage
from vary.request import VariationRequest
from vary.targets.hosted.bedrock import BEDROCK_PROVIDER, BedrockNovaCanvas, BedrockOptions

pytest.importorskip("boto3", reason='boto3 is the bedrock extra: pip install -e ".[bedrock]" (the test extra has it)')

ACCESS_KEY = "AKIAFAKEVARYTEST0001"
REGION = "eu-west-1"


def config(bedrock: FakeBedrock) -> str:
    options = {"region": REGION, "endpoint_url": bedrock.endpoint_url, "max_attempts": 3, "circuit_failures": 1000}
    return catalogue(hosted("nova", "bedrock-nova-canvas", None, **options), default="nova")


@pytest.fixture(scope="module")
def nova(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenAI, FakeBedrock]]:
    bedrock = FakeBedrock(access_key=ACCESS_KEY, region=REGION).start()
    root = tmp_path_factory.mktemp("bedrock")
    try:
        with serve(root, catalogue=config(bedrock), env=aws_env(root, ACCESS_KEY)) as vary:
            yield vary.client(), bedrock
    finally:
        bedrock.stop()


def test_n_above_five_is_split_and_sizes_are_mapped(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, bedrock = nova
    before = len(bedrock.calls)
    result = client.images.create_variation(
        image=png_bytes(64), n=7, size="256x256", response_format="b64_json", extra_body={"seed": 40}
    )
    assert [decode_png(base64.b64decode(item.b64_json or "")).size for item in result.data] == [(256, 256)] * 7
    calls = bedrock.calls[before:]
    configs = sorted((call["imageGenerationConfig"] for call in calls), key=lambda c: c["seed"])
    assert [(c["numberOfImages"], c["seed"], c["width"], c["height"]) for c in configs] == [
        (5, 40, 320, 320),  # 256 is below Nova's 320: rendered there, resized
        (2, 41, 320, 320),
    ]
    params = calls[0]["imageVariationParams"]
    assert base64.b64decode(params["images"][0]) == png_bytes(64)
    assert params["similarityStrength"] == 0.7  # the option's default, without a strength


def test_strength_and_guidance_map_onto_nova(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, bedrock = nova
    client.images.create_variation(
        image=png_bytes(64), size="512x512", response_format="b64_json",
        extra_body={"strength": 0.5, "guidance_scale": 20},
    )  # fmt: skip
    call = bedrock.calls[-1]
    assert call["imageVariationParams"]["similarityStrength"] == 0.6  # 1 - 0.8 x 0.5
    assert call["imageGenerationConfig"]["cfgScale"] == 10  # clamped to Nova's range
    assert call["imageGenerationConfig"]["width"] == 512


def test_several_images_go_in_one_call_and_unequal_weights_are_refused(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, bedrock = nova
    two = [png_bytes(32), png_bytes(48)]
    client.images.create_variation(image=two, size="1024x1024", response_format="b64_json")  # type: ignore[arg-type]
    assert [decode_png(base64.b64decode(d)).size for d in bedrock.calls[-1]["imageVariationParams"]["images"]] == [
        (32, 32),
        (48, 48),
    ]
    attempts = bedrock.attempts
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(image=two, extra_body={"image_weights": "3,1"})  # type: ignore[arg-type]
    assert refused.value.param == "image_weights" and bedrock.attempts == attempts


def test_urls_are_stored_and_signed_by_vary(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, _ = nova
    url = client.images.create_variation(image=png_bytes(64), size="256x256").data[0].url
    assert url is not None and "/v1/files/" in url
    assert decode_png(httpx.get(url, timeout=30).content).size == (256, 256)


def test_throttling_and_5xx_are_retried_by_the_gateway(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, bedrock = nova
    bedrock.faults.extend([("throttle",), ("status", 503)])
    attempts = bedrock.attempts
    result = client.images.create_variation(image=png_bytes(64), size="512x512", response_format="b64_json")
    assert len(result.data) == 1 and bedrock.attempts == attempts + 3


def test_every_attempt_failing_is_a_502(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, bedrock = nova
    bedrock.faults.extend([("status", 500)] * 3)
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.create_variation(image=png_bytes(64), size="512x512")
    assert failed.value.status_code == 502 and failed.value.code == "upstream_unavailable"


def test_a_validation_error_is_passed_on_and_not_retried(nova: tuple[OpenAI, FakeBedrock]) -> None:
    client, bedrock = nova
    bedrock.faults.append(("validation", "The input image contains content that is blocked by the filters."))
    attempts = bedrock.attempts
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(image=png_bytes(64), size="512x512")
    assert "blocked by the filters" in refused.value.message and bedrock.attempts == attempts + 1


def test_a_wrong_region_fails_the_signature_scope(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in aws_env(tmp_path, ACCESS_KEY).items():
        monkeypatch.setenv(name, value)
    bedrock = FakeBedrock(access_key=ACCESS_KEY, region=REGION).start()
    try:
        options = BedrockOptions(region="us-east-1", endpoint_url=bedrock.endpoint_url, max_attempts=1)
        target = BedrockNovaCanvas(name="x", engine=BEDROCK_PROVIDER, options=options)
        request = VariationRequest(images=(InputImage(png_bytes(64)),), n=1, size=512)
        with pytest.raises(UpstreamFailure, match="credentials or configuration"):
            asyncio.run(target.make(request))
        assert bedrock.attempts == 1 and not bedrock.calls
    finally:
        bedrock.stop()
