"""Limits at the HTTP layer, before any key is looked at: a capped request line (414) and head (431), a send
timeout for clients that never read, and WebSocket upgrades answered in OpenAI's JSON. Raw sockets."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Running, png_bytes, serve
from tests.robustness import hostile
from tests.robustness.hostile import MiB, multipart
from tests.robustness.test_hostile_input import first_response
from vary.testing import ServerProcess

WAIT_S = 120


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with serve(tmp_path_factory.mktemp("http-limits"), env={"VARY_SEND_TIMEOUT_SECONDS": "1"}) as vary:
        yield vary


def stream_then_read(port: int, head: bytes, filler: bytes, total: int) -> bytes:
    """Sends `head`, then `filler` until `total` bytes or until the server answers; returns the answer."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as connection:
        connection.sendall(head)
        sent = len(head)
        try:
            while sent < total and not select.select([connection], [], [], 0)[0]:
                connection.sendall(filler)
                sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is below
        try:
            while data := connection.recv(65536):
                received += data
        except ConnectionResetError:
            pass
    return received


def test_long_request_lines_are_refused_at_the_cap(limited: Running) -> None:
    """Three clients streaming 32 MiB request lines at once: each gets a 414 and none is buffered."""
    server = limited.server
    assert server.process is not None
    before = hostile.rss(server.process.pid)
    hostile.reset_peak(server.process.pid)
    answers: list[bytes] = []

    def client() -> None:
        answers.append(stream_then_read(server.port, b"GET /", b"a" * 65536, 32 * MiB))

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(WAIT_S)
    grown = hostile.rss(server.process.pid, "VmHWM") - before
    assert len(answers) == 3
    for answer in answers:
        status, body = first_response(answer)
        assert status == 414, answer[:300]
        assert json.loads(body)["error"]["code"] == "uri_too_long"
    assert grown < 32 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
    assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT_S).status_code == 200


def test_a_one_mib_cookie_is_refused_and_heads_within_the_caps_are_served(limited: Running) -> None:
    server = limited.server
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: "
    answer = stream_then_read(server.port, head, b"c" * 65536, MiB)
    status, body = first_response(answer)
    assert status == 431, answer[:300]
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert b"content-type: application/json" in answer.lower()
    # Just under both caps (8 KiB line, 64 KiB head) is served, and an upload's body never counts as head.
    headers = {f"x-filler-{i}": "f" * 1000 for i in range(56)}
    answer = httpx.get(f"{server.base_url}/healthz", params={"q": "a" * 7000}, headers=headers, timeout=WAIT_S)
    assert answer.status_code == 200
    upload = limited.post_variation(image=hostile.padded_to(png_bytes(32), 3 * MiB), headers=headers, timeout=WAIT_S)
    assert upload.status_code == 200, upload.text[:300]


def test_a_client_that_never_reads_is_dropped(limited: Running) -> None:
    """Two clients ask for six 1024 px images as base64 (about 10 MB each) and read nothing: after the
    send timeout the server drops them, their buffered responses with them (kernel's too: a reset)."""
    server, key = limited.server, limited.key
    body, content_type = multipart(
        [
            ("image", png_bytes(32), "a.png"),
            ("n", b"6", None),
            ("size", b"1024x1024", None),
            ("response_format", b"b64_json", None),
        ]
    )
    head = (
        "POST /v1/images/variations HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sockets = []
    for _ in range(2):
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.sendall(head + body)
        sockets.append(connection)
    try:
        assert wait_for_count(server, DROPPED, 2), server.log()[-2000:]
        unsent = [int(n) for n in re.findall(DROPPED + r" for 1s \(([0-9]+) bytes unsent\)", server.log())]
        assert len(unsent) == 2 and min(unsent) > 4 * MiB, unsent
        for connection in sockets:
            received = b""
            try:
                while data := connection.recv(1 << 20):
                    received += data
            except ConnectionResetError:
                pass
            assert len(received) < MiB  # the rest was thrown away with the connection
    finally:
        for connection in sockets:
            connection.close()
    # A slow reader is not a dead one: reading a bit at a time, slower than the send timeout in all,
    # it gets its whole response.
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        connection.sendall(head + body)
        received = b""
        while True:
            select.select([connection], [], [], WAIT_S)
            data = connection.recv(256 * 1024)
            received += data
            head_part, _, rest = received.partition(b"\r\n\r\n")
            if not data or (rest and len(rest) >= content_length(head_part)):
                break
            time.sleep(0.3)  # the client's pace: 256 KB every 0.3 s, so 10 MB take over 10 s
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert len(rest) == content_length(head_part) > 4 * MiB
    assert server.log().count(DROPPED) == 2


DROPPED = "dropped a client that read none of its response"


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 62


def wait_for_count(server: ServerProcess, text: str, count: int) -> bool:
    deadline = time.monotonic() + WAIT_S
    while server.log().count(text) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # poll interval, bounded by the deadline
    return True


UPGRADE = (
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@pytest.mark.parametrize(
    ("path", "auth", "status"),
    [("/v1/models", False, 401), ("/v1/stream", True, 404), ("/v1/images/variations", True, 405)],
)
def test_a_websocket_upgrade_gets_openai_json(limited: Running, path: str, auth: bool, status: int) -> None:
    server, key = limited.server, limited.key
    authorization = f"Authorization: Bearer {key}\r\n" if auth else ""
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE}{authorization}\r\n".encode()
    answer = hostile.raw_exchange(server.port, head, [], timeout=WAIT_S)
    got, body = first_response(answer)
    assert got == status, answer[:300]
    assert b"content-type: application/json" in answer.lower()
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert "WebSocket library" not in server.log()  # uvicorn's advice, wrong here: vary serves none
