"""The official openai SDK against a live `vary serve --model tiny-random`, as an unchanged client would use it."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import create_key, decode_png, png_bytes
from vary.state.database import Database
from vary.state.signing import UrlSigner
from vary.testing import ServerProcess


@pytest.fixture()
def client(server: ServerProcess, api_key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024"])
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_every_size_and_format(client: OpenAI, size: str, response_format: str) -> None:
    before = int(time.time())
    result = client.images.create_variation(image=png_bytes(64), n=2, size=size, response_format=response_format)
    assert before <= result.created <= int(time.time())
    assert len(result.data) == 2
    side = int(size.split("x")[0])
    payloads = []
    for image in result.data:
        if response_format == "url":
            assert image.b64_json is None and image.url
            response = httpx.get(image.url, timeout=30)
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            payloads.append(response.content)
        else:
            assert image.url is None and image.b64_json
            payloads.append(base64.b64decode(image.b64_json, validate=True))
    for data in payloads:
        img = decode_png(data)
        assert img.size == (side, side)
        assert img.mode == "RGB"
    assert payloads[0] != payloads[1], "the n images of one request must differ"


def test_defaults_are_one_url_at_1024(client: OpenAI) -> None:
    result = client.images.create_variation(image=png_bytes(32))
    assert len(result.data) == 1
    assert result.data[0].url is not None
    assert decode_png(httpx.get(result.data[0].url, timeout=30).content).size == (1024, 1024)


def test_n_10_in_one_request(client: OpenAI) -> None:
    result = client.images.create_variation(
        image=png_bytes(100, "RGBA"), n=10, size="256x256", response_format="b64_json"
    )
    images = [base64.b64decode(d.b64_json or "") for d in result.data]
    assert len(images) == 10
    assert len(set(images)) == 10
    assert all(decode_png(i).size == (256, 256) for i in images)


def test_model_names_default_alias_and_unknown(client: OpenAI) -> None:
    for model in ("tiny-random", "dall-e-2"):
        assert len(client.images.create_variation(image=png_bytes(), model=model, size="256x256").data) == 1
    with pytest.raises(openai.NotFoundError) as err:
        client.images.create_variation(image=png_bytes(), model="kandinsky-2.2")
    assert err.value.body == {
        "message": "The model `kandinsky-2.2` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_models_list(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-random", "dall-e-2"}
    tiny = models["tiny-random"].model_dump()
    assert tiny["object"] == "model" and "noise" in tiny["description"]
    assert models["dall-e-2"].model_dump()["parent"] == "tiny-random"
    assert client.models.retrieve("dall-e-2").id == "dall-e-2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")


def _url_parts(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    image_id = parts.path.rsplit("/", 1)[1].removesuffix(".png")
    return f"{parts.scheme}://{parts.netloc}", image_id, int(query["expires"][0]), query["signature"][0]


def test_tampered_and_expired_urls_are_refused(client: OpenAI, server_data_dir: Path) -> None:
    url = client.images.create_variation(image=png_bytes(), size="256x256").data[0].url
    assert url is not None
    base, image_id, expires, signature = _url_parts(url)
    assert expires - time.time() == pytest.approx(3600, abs=60)

    def fetch(path_id: str, exp: int | str, sig: str) -> httpx.Response:
        return httpx.get(f"{base}/v1/files/{path_id}.png", params={"expires": exp, "signature": sig}, timeout=30)

    assert fetch(image_id, expires, signature).status_code == 200
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    for response in (
        fetch(image_id, expires, flipped),
        fetch(image_id, expires + 3600, signature),
        fetch(image_id, expires, ""),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "invalid_signature"
    # Properly signed with the server's own secret, but in the past: refused as expired.
    signer = UrlSigner((server_data_dir / "secret").read_bytes())
    past = int(time.time()) - 1
    expired = fetch(image_id, past, signer.signature(image_id, past))
    assert expired.status_code == 403
    assert expired.json()["error"] == {
        "message": "This URL has expired.",
        "type": "invalid_request_error",
        "param": None,
        "code": "url_expired",
    }
    # Ids that are not ours never reach the disk, signed or not.
    for bad_id in ("..%2F..%2Fvary.db", "short", "a" * 65):
        assert fetch(bad_id, expires, signer.signature(bad_id, expires)).status_code == 404


def test_auth_missing_wrong_and_revoked(server: ServerProcess, server_data_dir: Path) -> None:
    key_id, key = create_key(server_data_dir, "to-revoke")
    url = f"{server.base_url}/v1"
    assert len(OpenAI(base_url=url, api_key=key, max_retries=0).models.list().data) == 2

    def body_of(api_key: str) -> dict[str, object]:
        with pytest.raises(openai.AuthenticationError) as err:
            OpenAI(base_url=url, api_key=api_key, max_retries=0).images.create_variation(image=png_bytes())
        assert err.value.status_code == 401
        assert isinstance(err.value.body, dict)
        return err.value.body

    # What the SDK refuses to send: no header at all, or another scheme.
    for headers in ({}, {"Authorization": f"Basic {key}"}, {"Authorization": "Bearer"}):
        raw = httpx.post(
            f"{url}/images/variations", headers=headers, files={"image": ("a.png", png_bytes())}, timeout=30
        )
        assert raw.status_code == 401
        assert raw.json()["error"]["code"] == "invalid_api_key"
        assert raw.json()["error"]["message"].startswith("You didn't provide an API key.")
    for wrong in ("sk-not-a-vary-key", key[:-1] + ("A" if key[-1] != "A" else "B"), f"vary-{key_id}-"):
        body = body_of(wrong)
        assert body["code"] == "invalid_api_key" and body["type"] == "invalid_request_error"
        assert key not in str(body)
    db = Database.open(server_data_dir / "vary.db")
    assert db.revoke_key(key_id)
    db.close()
    assert body_of(key)["code"] == "invalid_api_key"


def test_usage_rows_record_each_request(client: OpenAI, server_data_dir: Path) -> None:
    client.images.create_variation(image=png_bytes(), n=3, size="512x512", response_format="b64_json", user="user-Ω-42")
    with pytest.raises(openai.BadRequestError):
        client.images.create_variation(image=png_bytes(), n=11)
    db = Database.open(server_data_dir / "vary.db")
    rows = db.usage_rows()[-2:]
    db.close()
    ok, bad = rows
    assert (ok.status, ok.n, ok.size, ok.response_format, ok.user, ok.model) == (
        200,
        3,
        "512x512",
        "b64_json",
        "user-Ω-42",
        "tiny-random",
    )
    assert ok.key_id and ok.latency_ms > 0
    assert bad.status == 400


# A program as the README's first request writes it, run as a script (DeprecationWarning shows in __main__).
SCRIPT = """
import sys
{silence}
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
result = client.images.create_variation(image=open(sys.argv[3], "rb"), size="256x256", response_format="b64_json")
print(len(result.data))
"""
# What docs/api.md gives to silence it, exactly.
SILENCE = 'import warnings\nwarnings.filterwarnings("ignore", message="deprecated$", category=DeprecationWarning)'


def test_the_sdks_deprecated_warning_and_the_documented_way_to_silence_it(
    server: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    assert SILENCE in (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    image = tmp_path / "otter.png"
    image.write_bytes(png_bytes(64))
    said = {}
    for name, silence in (("plain", ""), ("silenced", SILENCE)):
        script = tmp_path / f"{name}.py"
        script.write_text(SCRIPT.format(silence=silence))
        done = subprocess.run(
            [sys.executable, str(script), f"{server.base_url}/v1", api_key, str(image)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
        said[name] = done.stderr
    assert "DeprecationWarning: deprecated" in said["plain"]  # the SDK marks the call; it works all the same
    assert said["silenced"] == ""
