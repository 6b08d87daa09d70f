"""Servers of their own: restarts, the first start's key, a model loaded from a directory, --no-auth, the CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.harness import Running, decode_png, png_bytes, post_variation, usage_rows_until
from vary.api.routes import CLIENT_CLOSED_REQUEST
from vary.engines.kandinsky import KandinskyVariationEngine


def vary_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vary", *args], capture_output=True, text=True, timeout=120)


def test_first_start_makes_a_key_once_and_urls_survive_a_restart(start_server: Callable[..., Running]) -> None:
    vary = start_server(key=False)
    first, data_dir = vary.server, vary.data_dir
    # stdout is a file here, not a terminal: the key is in its 0600 file, and the log only says where.
    key = (data_dir / "first-api-key").read_text().strip()
    assert key.startswith("vary-") and key not in first.log()
    assert first.wait_for_log(str(data_dir / "first-api-key"))
    client = vary.client(key)
    url = client.images.create_variation(image=png_bytes(), size="256x256").data[0].url
    assert url is not None
    original = httpx.get(url, timeout=30).content
    assert first.wait_for_log("GET /v1/files/"), "the access log line comes after the response"
    assert "signature=" not in first.log(), "access logs must not carry URL signatures"
    # The same port, so the URL handed out before the restart is used exactly as it was.
    second = vary.restart(same_port=True)
    assert "No API key existed" not in second.log(), "no second key"
    assert (data_dir / "secret").is_file() and (data_dir / "vary.db").is_file()
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.content == original
    assert vary.client(key).models.list().data


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-kandinsky"
    KandinskyVariationEngine.tiny_random().save_pretrained(path)
    return path


def test_a_saved_model_served_by_path_without_auth(start_server: Callable[..., Running], saved_model: Path) -> None:
    vary = start_server(model=str(saved_model), args=["--no-auth"], key=False)
    assert "shown only this once" not in vary.server.log()
    client = vary.client("anything")
    assert {m.id for m in client.models.list()} == {"tiny-kandinsky", "dall-e-2"}
    for size in ("256x256", "1024x1024"):
        result = client.images.create_variation(
            image=png_bytes(), model="tiny-kandinsky", n=3, size=size, response_format="b64_json"
        )
        side = int(size.split("x")[0])
        assert [decode_png(base64.b64decode(d.b64_json or "")).size for d in result.data] == [(side, side)] * 3
    no_header = post_variation(vary.base_url, None, size=None, response_format=None, timeout=30)
    assert no_header.status_code == 200


def test_public_url_sets_the_base_of_image_urls(start_server: Callable[..., Running]) -> None:
    vary = start_server(env={"VARY_PUBLIC_URL": "https://images.example.test/base/"})
    url = vary.client().images.create_variation(image=png_bytes()).data[0].url
    assert url is not None and url.startswith("https://images.example.test/base/v1/files/")
    local = url.replace("https://images.example.test/base", vary.base_url)
    assert httpx.get(local, timeout=30).status_code == 200


def test_keys_cli(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    created = vary_cli("keys", "create", "--name", "alice", "--data-dir", data_dir)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("vary-")
    key_id = key.split("-")[1]
    listed = vary_cli("keys", "list", "--data-dir", data_dir)
    assert key_id in listed.stdout and "alice" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout
    assert vary_cli("keys", "revoke", key_id, "--data-dir", data_dir).returncode == 0
    assert "revoked" in vary_cli("keys", "list", "--data-dir", data_dir).stdout
    missing = vary_cli("keys", "revoke", "nope", "--data-dir", data_dir)
    assert missing.returncode != 0 and "no key" in missing.stderr


def test_bad_model_and_bad_setting_are_clear_errors(tmp_path: Path) -> None:
    bad = vary_cli("serve", "--no-auth", "--model", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "d"))
    assert bad.returncode != 0
    assert "unknown model" in bad.stderr and "Traceback" not in bad.stderr
    bad_port = subprocess.run(
        [sys.executable, "-m", "vary", "keys", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VARY_PORT": "not-a-port", "VARY_DATA_DIR": str(tmp_path / "d")},
    )
    assert bad_port.returncode != 0 and "invalid setting" in bad_port.stderr


def test_a_client_that_leaves_is_recorded_and_its_work_stopped(start_server: Callable[..., Running]) -> None:
    # 100 denoising steps make the tiny model slow enough (about 20 s for n=10) to leave mid-generation.
    vary = start_server(env={"VARY_NUM_INFERENCE_STEPS": "100"})
    with pytest.raises(httpx.ReadTimeout):
        vary.post_variation(n=10, size=None, response_format=None, timeout=httpx.Timeout(30, read=1.0))
    rows = usage_rows_until(
        vary.data_dir,
        lambda rows: any(row.status == CLIENT_CLOSED_REQUEST for row in rows),
        timeout=60,
        key_id=vary.key_id,
    )
    assert [row.status for row in rows] == [CLIENT_CLOSED_REQUEST]
    assert vary.server.wait_for_log("generation stopped early: its client left")
    vary.server.stop()
    assert "Traceback" not in vary.server.log()
