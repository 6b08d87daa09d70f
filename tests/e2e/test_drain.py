"""SIGTERM drains: /readyz answers 503 at once, requests keep being served for VARY_DRAIN_SECONDS (new
connections included), then the server stops accepting, lets the request still in flight finish, and exits.

Measured, not assumed: each answer's time after the signal and its status, the moment connections are
refused, and a request whose upload began in the window and ends after the listener closed.
"""

from __future__ import annotations

import base64
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import png_bytes
from vary.testing import ServerProcess

DRAIN_S = 4.0
WAIT_S = 60.0


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_sigterm_fails_readiness_at_once_serves_the_window_then_finishes_what_is_in_flight(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        extra_args=["--no-auth"],
        env={"VARY_DRAIN_SECONDS": str(DRAIN_S), "VARY_READYZ_INTERVAL_SECONDS": "0", "VARY_LOG_FORMAT": "json"},
    ).start()
    url = f"{server.base_url}/v1/images/variations"
    fields = {"size": "256x256", "response_format": "b64_json", "n": "1"}
    deadline = time.monotonic() + WAIT_S
    while httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S).status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)  # readiness poll, bounded by the deadline

    # A slow upload: its first half goes out in the window, the rest only once the listener has closed.
    body, content_type = multipart(fields, png_bytes())
    first_half_sent, listener_closed = threading.Event(), threading.Event()
    slow: list[httpx.Response] = []

    def trickle() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        first_half_sent.set()
        listener_closed.wait(WAIT_S)
        yield body[len(body) // 2 :]

    def slow_upload() -> None:
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        slow.append(httpx.post(url, content=trickle(), headers=headers, timeout=WAIT_S))

    readiness: list[tuple[float, int, str]] = []
    served: list[tuple[float, float, int]] = []  # (sent, answered) seconds after the signal, status
    refused_at: float | None = None
    assert server.process is not None
    uploader = threading.Thread(target=slow_upload)
    try:
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        uploader.start()
        while refused_at is None and time.monotonic() - signalled < WAIT_S:
            sent = time.monotonic() - signalled
            try:
                ready = httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S)
                readiness.append((time.monotonic() - signalled, ready.status_code, ready.json()["status"]))
                answer = httpx.post(url, files={"image": ("a.png", png_bytes())}, data=fields, timeout=WAIT_S)
                served.append((sent, time.monotonic() - signalled, answer.status_code))
            except httpx.ConnectError:
                refused_at = sent
        listener_closed.set()
        uploader.join(WAIT_S)
        exit_code = server.process.wait(WAIT_S)
        exited_at = time.monotonic() - signalled
    finally:
        listener_closed.set()
        server.stop()

    print(f"readiness: {readiness[:3]}...; served: {served}; refused at {refused_at}; exited at {exited_at:.2f}")
    # /readyz fails at once, and stays failed.
    assert readiness and readiness[0][0] < 2.0 and all(status == 503 for _, status, _ in readiness)
    assert {state for _, _, state in readiness} == {"draining"}
    # Requests, each on a new connection, were served through the window.
    assert served and all(status == 200 for _, _, status in served), served
    assert max(sent for sent, _, _ in served) >= DRAIN_S * 0.6, served
    # Connections were refused only once the window was over, and not much later.
    assert refused_at is not None and DRAIN_S <= refused_at < DRAIN_S + 15, refused_at
    # The request in flight when the listener closed was answered in full.
    assert first_half_sent.is_set() and slow and slow[0].status_code == 200, slow and slow[0].text
    (image,) = slow[0].json()["data"]
    assert base64.b64decode(image["b64_json"]).startswith(b"\x89PNG")
    # Then vary exited, by the signal it was sent (uvicorn re-raises it once shut down).
    assert exit_code in (0, -signal.SIGTERM) and exited_at >= refused_at
    assert "draining for 4 s" in server.log() and "Traceback" not in server.log()
