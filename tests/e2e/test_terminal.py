"""`vary serve` as a person sees it on a terminal, and as a log collector sees it through a pipe."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import create_key
from tests.e2e.terminal import Terminal, console_script
from vary.testing import free_port

READY = "vary is ready."


def serve_args(data_dir: Path, port: int, *more: str) -> tuple[str, ...]:
    return ("serve", "--model", "tiny-random", "--data-dir", str(data_dir), "--port", str(port), *more)


def start_lines(screen: str) -> list[str]:
    """The lines of a start, up to the end of its ready block (a blank line after it)."""
    block_end = screen.index("\n\n", screen.index(READY))
    return [line for line in screen[:block_end].splitlines() if line.strip()]


def test_a_first_start_on_a_terminal_reads_as_text_and_ends_with_the_ready_block(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    with Terminal(*serve_args(data_dir, port)) as terminal:
        terminal.wait_for(f"curl {base}/v1/images/variations")
        screen = terminal.settle(1.0)
        lines = start_lines(screen)
        assert not [line for line in lines if line.startswith("{")], screen  # no JSON on a terminal
        assert not [line for line in lines if "uvicorn" in line.lower()], screen  # its start-up steps are noise
        ready = lines.index(READY)
        block = lines[ready:]
        assert block[1] == f"  Playground: {base}/"
        assert block[2] == f"  API:        {base}/v1  (docs: {base}/docs)"
        assert (
            block[3]
            == f"  Keys:       in {data_dir / 'vary.db'}; make one with: vary keys create --data-dir {data_dir}"
        )
        key = (data_dir / "first-api-key").read_text().strip()
        assert key in block and block[-1].startswith(f"  curl {base}/v1/images/variations")
        assert all(" INFO " in line for line in lines[:ready]), "the log lines all come before the block"

        # A browser loading the playground: its CSS, JS and icon are quiet; the page and API calls are lines.
        for path in ("/", "/static/playground.css", "/static/playground.js", "/favicon.ico"):
            assert httpx.get(base + path, timeout=30).status_code == 200
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).is_success
        after = terminal.wait_for("GET /v1/models 200")[len(screen) :]
        assert "GET / 200" in after
        assert "/static/" not in after and "favicon" not in after, after
        assert not [line for line in after.splitlines() if line.startswith("{")]


def test_every_later_start_says_where_everything_is(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    create_key(data_dir)  # so this is not the first start: no key is made
    base = f"http://127.0.0.1:{port}"
    with Terminal(*serve_args(data_dir, port)) as terminal:
        screen = terminal.wait_for("  Keys:")
        screen = terminal.settle(0.5)
    lines = start_lines(screen)
    block = lines[lines.index(READY) :]
    assert block == [
        READY,
        f"  Playground: {base}/",
        f"  API:        {base}/v1  (docs: {base}/docs)",
        f"  Keys:       in {data_dir / 'vary.db'}; make one with: vary keys create --data-dir {data_dir}",
    ]
    assert "No API key existed" not in screen


def test_assets_are_logged_when_asked_and_a_pipe_gets_json_with_the_ready_record(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    create_key(data_dir)
    log_path = tmp_path / "serve.log"
    env = {"HF_HUB_OFFLINE": "1", "VARY_LOG_ASSET_REQUESTS": "true"}
    with open(log_path, "wb") as log:  # stdout and stderr a file: no terminal
        process = subprocess.Popen(
            [*console_script(), *serve_args(data_dir, port)], stdout=log, stderr=log, env={**os.environ, **env}
        )
    try:
        records = _wait_for_record(process, log_path, "vary is ready")
        ready = records[-1]
        assert ready["message"].startswith(f"vary is ready: http://127.0.0.1:{port}/ (playground)")
        assert ready["keys_command"] == f"vary keys create --data-dir {data_dir}"
        assert httpx.get(f"http://127.0.0.1:{port}/static/playground.css", timeout=30).status_code == 200
        records = _wait_for_record(process, log_path, "GET /static/playground.css 200")
        assert records[-1]["logger"] == "vary.access"
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_busy_port_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Terminal(*serve_args(tmp_path / "data", port)) as terminal:
            status = terminal.finish()
    screen = terminal.screen
    assert status != 0
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines == [
        f"vary: 127.0.0.1:{port} is already in use, by another vary serve or another server: stop it, "
        "or choose another port with --port (VARY_PORT)"
    ], screen
    assert not (tmp_path / "data").exists(), "nothing is made for a start that cannot listen"


def _wait_for_record(process: subprocess.Popen[bytes], log_path: Path, text: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120
    while True:
        lines = log_path.read_text().splitlines()
        if any(text in line for line in lines):
            records = [json.loads(line) for line in lines]  # every line is a JSON object
            return records[: next(i for i, r in enumerate(records) if text in str(r["message"])) + 1]
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)  # poll interval, bounded by the deadline
