"""Several input images through hosted providers: gpt-image edits get every one, an upstream vary gets them
with their weights, and a provider that takes one image is never called with two."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.fakes.providers import FakeProvider
from tests.harness import catalogue, hosted, local, png_bytes, serve

SECRET = "sk-fake-upstream-SECRET-images"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenAI, FakeProvider]]:
    provider = FakeProvider(key=SECRET).start()
    openai_api = {"key_env": "FAKE_OPENAI_KEY", "max_attempts": 1}
    models = catalogue(
        local(),
        hosted("up-gpt-image", "openai-gpt-image", f"{provider.base_url}/v1", **openai_api),
        hosted("up-vary", "openai-compatible", f"{provider.base_url}/v1", forward_controls=True, **openai_api),
        hosted("up-openai", "openai-compatible", f"{provider.base_url}/v1", **openai_api),
        default="local",
    )
    try:
        with serve(
            tmp_path_factory.mktemp("gateway-images"), catalogue=models, env={"FAKE_OPENAI_KEY": SECRET}
        ) as vary:
            yield vary.client(), provider
    finally:
        provider.stop()


def three() -> list[bytes]:
    return [png_bytes(32), png_bytes(48), png_bytes(64)]


def test_gpt_image_edits_receive_every_image(gateway: tuple[OpenAI, FakeProvider]) -> None:
    client, provider = gateway
    result = client.images.create_variation(
        image=three(),  # type: ignore[arg-type]
        model="up-gpt-image",
        size="256x256",
        response_format="b64_json",
    )
    assert len(result.data) == 1
    call = provider.calls_to("edits")[-1]
    assert call.images == [("image[]", (32, 32)), ("image[]", (48, 48)), ("image[]", (64, 64))]


def test_an_upstream_vary_receives_the_images_and_their_weights(gateway: tuple[OpenAI, FakeProvider]) -> None:
    client, provider = gateway
    client.images.create_variation(
        image=three()[:2],  # type: ignore[arg-type]
        model="up-vary",
        size="256x256",
        response_format="b64_json",
        extra_body={"image_weights": "0.7,0.3", "seed": 4},
    )
    call = provider.calls_to("openai")[-1]
    assert call.images == [("image[]", (32, 32)), ("image[]", (48, 48))]
    assert call.fields["image_weights"] == "0.7,0.3" and call.fields["seed"] == "4"


def test_one_image_goes_as_it_always_did(gateway: tuple[OpenAI, FakeProvider]) -> None:
    client, provider = gateway
    client.images.create_variation(image=png_bytes(40), model="up-openai", size="256x256", response_format="b64_json")
    call = provider.calls_to("openai")[-1]
    assert call.images == [("image", (40, 40))] and "image_weights" not in call.fields


def test_a_one_image_provider_is_not_called_with_two(gateway: tuple[OpenAI, FakeProvider]) -> None:
    client, provider = gateway
    before = len(provider.calls)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(image=three()[:2], model="up-openai", size="256x256")  # type: ignore[arg-type]
    assert refused.value.status_code == 400 and refused.value.param == "image"
    assert "takes one input image" in refused.value.message
    assert len(provider.calls) == before
