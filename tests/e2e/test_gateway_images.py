"""Several input images through hosted providers: gpt-image edits get every one, an upstream vary gets them
with their weights, and a provider that takes one image is never called with two."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.conftest import create_key, png_bytes
from tests.fakes.providers import FakeProvider
from vary.testing import ServerProcess

SECRET = "sk-fake-upstream-SECRET-images"


def config(provider: FakeProvider) -> str:
    options = f'base_url = "{provider.base_url}/v1"\napi_key_env = "FAKE_OPENAI_KEY"\nmax_attempts = 1'
    return f"""
default = "local"

[[models]]
name = "local"
engine = "kandinsky-2.2"
weights = "tiny-random"

[[models]]
name = "up-gpt-image"
engine = "openai-gpt-image"
[models.options]
{options}

[[models]]
name = "up-vary"
engine = "openai-compatible"
[models.options]
{options}
forward_controls = true

[[models]]
name = "up-openai"
engine = "openai-compatible"
[models.options]
{options}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenAI, FakeProvider]]:
    provider = FakeProvider(key=SECRET).start()
    root = tmp_path_factory.mktemp("gateway-images")
    (root / "vary.toml").write_text(config(provider))
    data_dir = root / "data"
    data_dir.mkdir()
    env = {"FAKE_OPENAI_KEY": SECRET}
    server = ServerProcess(data_dir, extra_args=["--config", str(root / "vary.toml")], env=env).start()
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=create_key(data_dir)[1], max_retries=0)
    yield client, provider
    server.stop()
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
