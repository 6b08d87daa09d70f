"""Servers of their own: restarts, the first start's key, a model loaded from a directory, --no-auth, the CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import create_key, decode_png, png_bytes
from vary.api.routes import CLIENT_CLOSED_REQUEST
from vary.engines.kandinsky import KandinskyVariationEngine
from vary.state.database import Database
from vary.testing import ServerProcess


def vary_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vary", *args], capture_output=True, text=True, timeout=120)


def test_first_start_prints_a_key_once_and_urls_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir).start()
    try:
        printed = [line for line in first.log().splitlines() if line.startswith("vary-")]
        assert len(printed) == 1
        key = printed[0]
        client = OpenAI(base_url=f"{first.base_url}/v1", api_key=key, max_retries=0)
        url = client.images.create_variation(image=png_bytes(), size="256x256").data[0].url
        assert url is not None
        original = httpx.get(url, timeout=30).content
        assert first.wait_for_log("GET /v1/files/"), "the access log line comes after the response"
        assert "signature=" not in first.log(), "access logs must not carry URL signatures"
    finally:
        first.stop()
    # The same port, so the URL handed out before the restart is used exactly as it was.
    second = ServerProcess(data_dir, port=first.port).start()
    try:
        assert not [line for line in second.log().splitlines() if line.startswith("vary-")], "no second key"
        assert (data_dir / "secret").is_file() and (data_dir / "vary.db").is_file()
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200 and response.content == original
        assert OpenAI(base_url=f"{second.base_url}/v1", api_key=key, max_retries=0).models.list().data
    finally:
        second.stop()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-kandinsky"
    KandinskyVariationEngine.tiny_random().save_pretrained(path)
    return path


def test_a_saved_model_served_by_path_without_auth(tmp_path: Path, saved_model: Path) -> None:
    server = ServerProcess(tmp_path / "data", model=str(saved_model), extra_args=["--no-auth"]).start()
    try:
        assert "shown only this once" not in server.log()
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="anything", max_retries=0)
        assert {m.id for m in client.models.list()} == {"tiny-kandinsky", "dall-e-2"}
        for size in ("256x256", "1024x1024"):
            result = client.images.create_variation(
                image=png_bytes(), model="tiny-kandinsky", n=3, size=size, response_format="b64_json"
            )
            side = int(size.split("x")[0])
            assert [decode_png(base64.b64decode(d.b64_json or "")).size for d in result.data] == [(side, side)] * 3
        no_header = httpx.post(
            f"{server.base_url}/v1/images/variations", files={"image": ("a.png", png_bytes())}, timeout=30
        )
        assert no_header.status_code == 200
    finally:
        server.stop()


def test_public_url_sets_the_base_of_image_urls(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, key = create_key(data_dir)
    server = ServerProcess(data_dir, env={"VARY_PUBLIC_URL": "https://images.example.test/base/"}).start()
    try:
        url = (
            OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
            .images.create_variation(image=png_bytes())
            .data[0]
            .url
        )
        assert url is not None and url.startswith("https://images.example.test/base/v1/files/")
        local = url.replace("https://images.example.test/base", server.base_url)
        assert httpx.get(local, timeout=30).status_code == 200
    finally:
        server.stop()


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


def test_a_client_that_leaves_is_recorded_and_its_work_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key_id, key = create_key(data_dir)
    # 100 denoising steps make the tiny model slow enough (about 20 s for n=10) to leave mid-generation.
    server = ServerProcess(data_dir, env={"VARY_NUM_INFERENCE_STEPS": "100"}).start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.base_url}/v1/images/variations",
                headers={"Authorization": f"Bearer {key}"},
                files={"image": ("a.png", png_bytes())},
                data={"n": "10"},
                timeout=httpx.Timeout(30, read=1.0),
            )
        deadline = time.monotonic() + 60
        statuses: list[int] = []
        while time.monotonic() < deadline and CLIENT_CLOSED_REQUEST not in statuses:
            db = Database.open(data_dir / "vary.db")
            statuses = [row.status for row in db.usage_rows() if row.key_id == key_id]
            db.close()
            time.sleep(0.1)  # poll interval, bounded by the deadline
        assert statuses == [CLIENT_CLOSED_REQUEST]
        assert server.wait_for_log("generation stopped early: its client left")
    finally:
        server.stop()
    assert "Traceback" not in server.log()
