"""Programs written against other gateways' documented requests, run against vary with only the base URL changed.

Obiguard's curl sends the key as `x-obiguard-api-key`; TrueFoundry's OpenAPI puts the route at
`/images/variations` on its base URL, with no `/v1`. The header list is a setting.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import httpx
from openai import OpenAI

from tests.harness import decode_png, png_bytes, serve
from vary.testing import ServerProcess


def test_obiguards_documented_request_works(server: ServerProcess, api_key: str) -> None:
    image = png_bytes(64)
    # The documented request, header for header (their base URL ends in /v1).
    answer = httpx.post(
        f"{server.base_url}/v1/images/variations",
        headers={"x-obiguard-api-key": api_key},
        files={"image": ("original.png", image, "image/png")},
        data={"n": "1", "size": "256x256", "response_format": "b64_json"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert decode_png(base64.b64decode(answer.json()["data"][0]["b64_json"])).size == (256, 256)
    # A wrong key in that header is refused like a wrong Bearer key; an empty one is a missing key.
    wrong = httpx.post(
        f"{server.base_url}/v1/images/variations",
        headers={"x-obiguard-api-key": "vary-wrong"},
        files={"image": ("original.png", image, "image/png")},
        timeout=60,
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert "Incorrect API key" in wrong.json()["error"]["message"]


def test_curl_with_a_key_header_and_no_v1(server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    photo = tmp_path / "original.png"
    photo.write_bytes(png_bytes(64))
    done = subprocess.run(
        ["curl", "-sS", f"{server.base_url}/images/variations", "-H", f"x-obiguard-api-key: {api_key}",
         "-F", f"image=@{photo}", "-F", "size=256x256", "-F", "response_format=b64_json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"b64_json"' in done.stdout, done.stdout


def test_the_sdk_with_a_base_url_without_v1(server: ServerProcess, api_key: str) -> None:
    client = OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)
    assert [m.id for m in client.models.list().data][0] == "tiny-random"
    assert client.models.retrieve("tiny-random").id == "tiny-random"
    result = client.images.create_variation(image=png_bytes(64), size="256x256")
    url = result.data[0].url
    assert url is not None and httpx.get(url, timeout=30).status_code == 200
    # The aliases are auth-checked as the documented routes are.
    assert httpx.get(f"{server.base_url}/models", timeout=30).status_code == 401


def test_the_aliases_are_not_documented_twice(server: ServerProcess) -> None:
    paths = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()["paths"]
    assert "/v1/images/variations" in paths and "/v1/models" in paths
    assert not [path for path in paths if not path.startswith("/v1/")]


def test_the_accepted_key_headers_are_a_setting(tmp_path: Path) -> None:
    env = {"VARY_API_KEY_HEADERS": '["x-team-key"]'}
    with serve(tmp_path, env=env) as own:
        models, key = f"{own.base_url}/v1/models", own.key
        assert httpx.get(models, headers={"x-team-key": key}, timeout=30).status_code == 200
        assert httpx.get(models, headers={"api-key": key}, timeout=30).status_code == 401  # not in the list now
        assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
