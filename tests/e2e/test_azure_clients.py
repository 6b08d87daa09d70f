"""The official `openai.AzureOpenAI` client, unchanged, against a live server: Azure's paths and `api-key` header."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from openai import AzureOpenAI

from tests.conftest import decode_png, png_bytes
from vary.testing import ServerProcess

API_VERSION = "2024-02-01"


def check_images(result: openai.types.ImagesResponse, count: int, side: int) -> None:
    assert len(result.data) == count
    for item in result.data:
        assert item.b64_json is not None
        assert decode_png(base64.b64decode(item.b64_json)).size == (side, side)


def test_azure_endpoint_with_a_deployment(server: ServerProcess, api_key: str) -> None:
    client = AzureOpenAI(
        azure_endpoint=server.base_url,
        azure_deployment="tiny-random",
        api_key=api_key,  # sent as the api-key header
        api_version=API_VERSION,
        max_retries=0,
    )
    # Variations are not among the SDK's deployment endpoints, so it sends /openai/images/variations:
    # the model is the `model` field, or the default.
    result = client.images.create_variation(image=png_bytes(64), n=2, size="256x256", response_format="b64_json")
    check_images(result, 2, 256)
    named = client.images.create_variation(image=png_bytes(64), model="tiny-random", response_format="b64_json")
    check_images(named, 1, 1024)


def test_base_url_without_a_deployment_takes_the_model_field(server: ServerProcess, api_key: str) -> None:
    client = AzureOpenAI(base_url=f"{server.base_url}/openai", api_key=api_key, api_version=API_VERSION, max_retries=0)
    result = client.images.create_variation(
        image=png_bytes(64), model="dall-e-2", size="256x256", response_format="b64_json"
    )
    check_images(result, 1, 256)
    # URLs come back signed and fetchable, as on /v1.
    url = client.images.create_variation(image=png_bytes(64), size="256x256").data[0].url
    assert url is not None and httpx.get(url, timeout=30).status_code == 200


def test_base_url_with_a_deployment(server: ServerProcess, api_key: str) -> None:
    client = AzureOpenAI(
        base_url=f"{server.base_url}/openai/deployments/tiny-random",
        api_key=api_key,
        api_version=API_VERSION,
        max_retries=0,
    )
    check_images(
        client.images.create_variation(image=png_bytes(64), size="512x512", response_format="b64_json"), 1, 512
    )


def test_errors_in_openai_shape(server: ServerProcess, api_key: str) -> None:
    wrong_key = AzureOpenAI(
        azure_endpoint=server.base_url, azure_deployment="tiny-random", api_key="nope", api_version=API_VERSION
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong_key.images.create_variation(image=png_bytes(64), size="256x256")
    assert refused.value.code == "invalid_api_key"
    unknown = AzureOpenAI(
        base_url=f"{server.base_url}/openai/deployments/no-such", api_key=api_key, api_version=API_VERSION
    )
    with pytest.raises(openai.NotFoundError) as missing:
        unknown.images.create_variation(image=png_bytes(64), size="256x256")
    assert missing.value.code == "model_not_found"
    client = AzureOpenAI(azure_endpoint=server.base_url, api_key=api_key, api_version=API_VERSION, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.create_variation(image=png_bytes((64, 32)), size="256x256")
    assert bad.value.param == "image"


def test_raw_api_key_header_and_bearer_on_azure_paths(server: ServerProcess, api_key: str) -> None:
    files = {"image": ("a.png", png_bytes(64), "image/png")}
    data = {"size": "256x256", "response_format": "b64_json"}
    url = f"{server.base_url}/openai/deployments/tiny-random/images/variations?api-version={API_VERSION}"
    for headers in ({"api-key": api_key}, {"Authorization": f"Bearer {api_key}"}):
        response = httpx.post(url, headers=headers, files=files, data=data, timeout=60)
        assert response.status_code == 200, response.text
    missing = httpx.post(url, files=files, data=data, timeout=60)
    assert missing.status_code == 401 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
