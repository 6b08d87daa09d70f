"""A new user's first run: `vary pull` from a Hub on loopback, a start offline, one-line errors, no hang, one data dir.

The fake Hub serves the real repositories' file layout (kandinsky-community's decoder and prior)
from the tiny twin's `save_pretrained`, plus files vary must not fetch (`.bin` twins, the prior
transformer, a text encoder). The silent Hub accepts connections and never answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.fakes.hub import FakeHub, SilentHub
from tests.harness import catalogue, create_key, local, png_bytes, serve
from vary.engines.kandinsky import DECODER_REPO, PRIOR_REPO, KandinskyVariationEngine
from vary.testing import free_port

DECODER_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "movq/config.json",
    "movq/diffusion_pytorch_model.safetensors",
}
PRIOR_FILES = {
    "image_encoder/config.json",
    "image_encoder/model.safetensors",
    "image_processor/preprocessor_config.json",
}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two Kandinsky repositories as the Hub lays them out, with tiny weights and files vary must not fetch."""
    root = tmp_path_factory.mktemp("hub-repos")
    KandinskyVariationEngine.tiny_random().save_pretrained(root)
    decoder, prior = root / "decoder", root / "prior"
    for folder in (decoder, prior):
        (folder / "README.md").write_text("model card\n")
    shutil.copy(decoder / "unet/diffusion_pytorch_model.safetensors", decoder / "unet/diffusion_pytorch_model.bin")
    shutil.copytree(prior / "image_encoder", prior / "prior")  # stands in for the prior transformer
    shutil.copytree(prior / "image_encoder", prior / "text_encoder")
    shutil.copy(prior / "image_encoder/model.safetensors", prior / "image_encoder/pytorch_model.bin")
    return {DECODER_REPO: decoder, PRIOR_REPO: prior}


# The real model, renders at the tiny weights' scale: a full-size render of toy weights would take minutes on a CPU.
CATALOGUE = catalogue(
    local("kandinsky-2.2", weights=None, options={"steps": 2, "min_render_side": 64, "max_render_side": 64})
)


def hub_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint, **extra}


def vary(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vary", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def cached_files(hf_home: Path, repo: str) -> set[str]:
    snapshots = hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    (snapshot,) = snapshots.iterdir()
    return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}


def the_error_line(stderr: str) -> str:
    """The one line a failed start says, with no traceback beside it."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    return errors[0]


def test_pull_fetches_exactly_what_loads_then_serve_starts_with_the_hub_gone(
    tmp_path: Path, repos: dict[str, Path]
) -> None:
    catalogue = tmp_path / "models.toml"
    catalogue.write_text(CATALOGUE)
    with FakeHub(repos) as hub:
        env = hub_env(tmp_path, hub.url)
        pulled = vary("pull", "--config", str(catalogue), env=env)
        assert pulled.returncode == 0, pulled.stderr
    lines = pulled.stdout.splitlines()
    assert lines[2].endswith("in all (files already downloaded are not fetched again).")  # the size, first
    assert cached_files(tmp_path / "hf", DECODER_REPO) == DECODER_FILES
    assert cached_files(tmp_path / "hf", PRIOR_REPO) == PRIOR_FILES

    # The Hub is gone (its port closed), HF_HUB_OFFLINE unset: the start reads the cache and asks nobody.
    # Its key, made before the start, keeps the start from printing a key banner: the whole output is the log.
    offline_env = {**env, "HF_HUB_OFFLINE": "0", "VARY_LOG_LEVEL": "debug"}
    with serve(tmp_path, args=["--catalogue", str(catalogue)], env=offline_env) as served:
        client = served.client()
        image = client.images.create_variation(image=png_bytes(64), size="256x256", response_format="b64_json")
        assert image.data and image.data[0].b64_json
        log = served.server.log()
    records = [json.loads(line) for line in log.splitlines()]  # every line of a start is one JSON object
    messages = [record["message"] for record in records]
    assert any(m.startswith("loaded model kandinsky-2.2") for m in messages)
    assert not any("fetching" in m for m in messages)


def test_an_empty_cache_offline_is_one_line_and_the_first_key_is_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = hub_env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    result = vary("serve", "--data-dir", str(data_dir), "--log-format", "text", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    line = the_error_line(result.stderr)
    assert "model kandinsky-2.2" in line and "kandinsky-community/kandinsky-2-2-" in line
    assert "HF_HUB_OFFLINE" in line
    for way_out in ("vary pull kandinsky-2.2", "--model tiny-random", "--model DIR", "HF_ENDPOINT"):
        assert way_out in line
    key_file = data_dir / "first-api-key"
    assert key_file.read_text().startswith("vary-") and key_file.stat().st_mode & 0o777 == 0o600


def test_a_hub_that_never_answers_ends_the_start_with_one_line(tmp_path: Path) -> None:
    with SilentHub() as hub:
        env = hub_env(tmp_path, hub.url, HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
        args = ("serve", "--data-dir", str(tmp_path / "data"), "--log-format", "text", "--port", str(free_port()))
        result = vary(*args, env=env, timeout=240)  # bounded by the Hub timeouts, not by this generous limit
    assert result.returncode == 1
    line = the_error_line(result.stderr)
    assert f"the Hub at {hub.url} did not answer" in line and "kandinsky-community/kandinsky-2-2-decoder" in line


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture()
def hung_start(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`vary serve` stuck on a Hub that never answers (each call would wait a minute)."""
    with SilentHub() as hub:
        env = hub_env(tmp_path, hub.url, HF_HUB_ETAG_TIMEOUT="60", HF_HUB_DOWNLOAD_TIMEOUT="60")
        log_path = tmp_path / "serve.log"
        args = ("serve", "--data-dir", str(tmp_path / "data"), "--log-format", "text", "--port", str(free_port()))
        with open(log_path, "wb") as log:
            # SIGINT ignored, as a script's `&` leaves it (a CI runner may too): Ctrl-C must still stop the start.
            process = subprocess.Popen(
                [sys.executable, "-m", "vary", *args], env=env, stdout=log, stderr=log, preexec_fn=ignore_sigint
            )
        try:
            yield process, log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_hung_load(hung_start: tuple[subprocess.Popen[bytes], Path], sig: int) -> None:
    process, log_path = hung_start
    deadline = time.monotonic() + 120
    while "fetching" not in log_path.read_text() and time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        time.sleep(0.2)  # poll interval, bounded by the deadline
    assert "fetching" in log_path.read_text(), "the start never reached the Hub"
    process.send_signal(sig)
    assert process.wait(timeout=30) != 0  # well before the minute a Hub call would wait


def test_keys_created_from_another_directory_are_seen_by_the_server(tmp_path: Path) -> None:
    elsewhere, there = tmp_path / "elsewhere", tmp_path / "there"
    elsewhere.mkdir(), there.mkdir()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    env.pop("VARY_DATA_DIR", None)
    created = vary("keys", "create", "--name", "from-elsewhere", env=env, cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    data_dir = tmp_path / "xdg" / "vary"
    assert f"data dir {data_dir} (the per-user default" in created.stderr

    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "vary", "serve", "--model", "tiny-random", "--port", str(port)],
            env={**env, "HF_HUB_OFFLINE": "1"},
            cwd=there,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)  # readiness poll, bounded by the deadline
        models = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0).models.list()
        assert [m.id for m in models.data][0] == "tiny-random"
        assert f"data dir {data_dir}" in log_path.read_text()
        assert "No API key existed" not in log_path.read_text(), "a key existed, so no first key is made"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    # An old ./vary-data in the current directory is still used, and said so.
    legacy = there / "vary-data"
    create_key(legacy)
    listed = vary("keys", "list", env=env, cwd=there)
    assert listed.returncode == 0 and "found in the current directory" in listed.stderr


@pytest.mark.parametrize("offline", [False, True])
def test_pull_without_the_hub_names_the_ways_out(tmp_path: Path, offline: bool) -> None:
    env = hub_env(tmp_path, f"http://127.0.0.1:{free_port()}", **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    pulled = vary("pull", env=env, timeout=120)
    assert pulled.returncode == 1 and "Traceback" not in pulled.stderr
    (line,) = pulled.stderr.strip().splitlines()
    assert line.startswith("vary: pull failed: ")
    assert ("unset HF_HUB_OFFLINE" if offline else "HF_ENDPOINT=URL") in line
    assert str(tmp_path / "hf" / "hub") in line  # the cache to copy from a machine that reaches the Hub
    assert "vary serve --model tiny-random" in line


def test_a_first_key_from_a_failed_start_is_shown_until_it_is_used(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = hub_env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    failed = vary("serve", "--data-dir", str(data_dir), "--log-format", "text", "--port", str(free_port()), env=env)
    assert failed.returncode == 1
    key_file = data_dir / "first-api-key"
    key = key_file.read_text().strip()

    # The next start that gets ready says where the key is (stdout is no terminal here, so not the key itself).
    with serve(tmp_path, key=False) as served:
        assert served.server.wait_for_log("vary is ready")
        log = served.server.log()
        assert f"The first API key, made by an earlier start, has not been used yet. It is in {key_file}" in log
        assert key not in log
        served.client(key).images.create_variation(image=png_bytes(64), size="256x256", response_format="b64_json")
    # Used: no more reminders, and no new key.
    with serve(tmp_path, key=False) as served:
        assert served.server.wait_for_log("vary is ready")
        assert "first API key" not in served.server.log() and "No API key existed" not in served.server.log()
    assert key_file.read_text().strip() == key


def test_an_unused_first_key_whose_file_is_deleted_is_not_mentioned(tmp_path: Path) -> None:
    with serve(tmp_path, key=False) as served:
        assert served.server.wait_for_log("No API key existed, so one was created")
    (served.data_dir / "first-api-key").unlink()
    with serve(tmp_path, key=False) as served:
        assert served.server.wait_for_log("vary is ready")
        assert "first API key" not in served.server.log() and "No API key existed" not in served.server.log()
