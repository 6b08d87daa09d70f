"""Faults and attacks: a slow upload, a store that cannot write, kill -9 mid-write, tampered and traversing
URLs, revoked keys, cross-origin requests."""

from __future__ import annotations

import json
import select
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.harness import Running, png_bytes, serve, usage_rows_until
from tests.robustness.hostile import BOUNDARY, multipart
from tests.robustness.test_hostile_input import first_response
from vary.state.signing import UrlSigner
from vary.testing import ServerProcess

WAIT_S = 60


@pytest.fixture()
def own_server(tmp_path: Path) -> Iterator[Running]:
    env = {"VARY_BODY_TIMEOUT_SECONDS": "1", "VARY_HEADER_TIMEOUT_SECONDS": "1"}
    with serve(tmp_path, env=env, request_timeout=WAIT_S) as vary:
        yield vary
        vary.server.stop(signal.SIGKILL)  # if it still runs


def test_a_trickling_upload_is_cut_off_with_a_408(own_server: Running) -> None:
    server, key = own_server.server, own_server.key
    body = multipart([("image", png_bytes(), "a.png")])[0]
    head = (
        "POST /v1/images/variations HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as connection:
        connection.sendall(head)
        for i in range(0, len(body), 10):  # the hostile pace: 10 bytes every 0.3 s, past the 1 s body timeout
            if select.select([connection], [], [], 0.3)[0]:
                break  # the server has answered
            connection.sendall(body[i : i + 10])
        while data := connection.recv(65536):
            received += data
    status, content = first_response(received)
    assert status == 408, received[:300]
    assert json.loads(content)["error"] == {
        "message": "The request body did not arrive within 1 seconds.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
    assert time.monotonic() - started < 10
    assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT_S).status_code == 200


def test_trickling_headers_are_cut_off_with_a_408(own_server: Running) -> None:
    server = own_server.server
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as connection:
        connection.sendall(b"POST /v1/images/variations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(200):  # a header byte every 0.3 s, past the 1 s header timeout: never finishes
            if select.select([connection], [], [], 0.3)[0]:
                break
            connection.sendall(b"a")
        while data := connection.recv(65536):
            received += data
    status, content = first_response(received)
    assert status == 408, received[:300]
    assert json.loads(content)["error"] == {
        "message": "The request headers did not arrive within 1 seconds.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
    assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT_S).status_code == 200


def test_a_connection_that_never_sends_a_request_is_closed(own_server: Running) -> None:
    server = own_server.server
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as silent:
        assert silent.recv(65536) == b""  # closed by the server, without an answer nobody asked for
    # A client that sends its request promptly on a kept-alive connection is not affected.
    with httpx.Client(base_url=server.base_url, timeout=WAIT_S) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(1.5)  # idle past the header timeout, within uvicorn's 5 s keep-alive
        assert own_server.post_variation(response_format=None).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_a_store_that_cannot_write_is_an_error_never_a_url(own_server: Running) -> None:
    data_dir = own_server.data_dir
    images = data_dir / "images"
    images.rename(data_dir / "images-away")
    images.write_text("a file where the directory was: every write fails, as on a full or read-only disk")
    try:
        failed = own_server.post_variation(response_format=None)
        assert failed.status_code == 503 and failed.headers["Retry-After"]
        assert failed.json()["error"]["code"] == "store_unavailable" and "url" not in failed.text
        # What needs no store still works.
        assert own_server.post_variation(response_format="b64_json").status_code == 200
    finally:
        images.unlink()
        (data_dir / "images-away").rename(images)
    assert own_server.post_variation(response_format=None).status_code == 200


def test_kill_9_while_writing_then_restart(own_server: Running, start_server: Callable[..., Running]) -> None:
    server, data_dir = own_server.server, own_server.data_dir
    before = own_server.post_variation(n="2", response_format=None).json()["data"]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                own_server.post_variation(n="10", size="1024x1024", response_format=None)
            except httpx.HTTPError:
                return  # the server is gone

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + WAIT_S
    images = data_dir / "images"
    while len(list(images.glob("*.png"))) < 40:  # well into the writing
        assert time.monotonic() < deadline
        time.sleep(0.01)  # poll interval, bounded by the deadline
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(WAIT_S)
    stop.set()
    for worker in workers:
        worker.join(WAIT_S)

    # The same data dir, without the short timeouts.
    restarted = start_server(key=False, port=server.port, request_timeout=WAIT_S)
    for item in before:  # URLs handed out before the crash still work
        assert httpx.get(item["url"], timeout=WAIT_S).status_code == 200
    for path in images.iterdir():
        if path.suffix == ".png":
            Image.open(path).load()  # every stored image is whole
        else:  # a temp file the crash left: never reachable by any URL, swept later
            name = path.name
            assert httpx.get(f"{restarted.base_url}/v1/files/{name}", timeout=WAIT_S).status_code == 404
    with sqlite3.connect(data_dir / "vary.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # A row spooled before the crash is written after the restart.
    assert len(usage_rows_until(data_dir, bool)) >= 1
    assert restarted.post_variation(own_server.key, response_format=None).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/..%2F..%2Fvary.db",
        "/v1/files/..%2Fsecret",
        "/v1/files/%2e%2e%2fvary.db.png",
        "/v1/files/....png",
        "/v1/files/.png",
        "/v1/files/a%00b.png",
        "/v1/files/" + "a" * 5000 + ".png",
        "/v1/files/../../vary.db",
        "/v1/files//etc/passwd",
    ],
)
def test_path_traversal_in_the_image_id_is_refused(server: ServerProcess, server_data_dir: Path, path: str) -> None:
    response = httpx.get(f"{server.base_url}{path}", params={"expires": "9999999999", "signature": "x"}, timeout=WAIT_S)
    assert response.status_code in (403, 404)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert (server_data_dir / "secret").read_bytes() not in response.content


def test_tampered_signatures_are_refused(server: ServerProcess, http: httpx.Client) -> None:
    url = http.post("/v1/images/variations", files={"image": ("a.png", png_bytes())}).json()["data"][0]["url"]
    assert httpx.get(url, timeout=WAIT_S).status_code == 200
    base, query = url.split("?")
    expires, signature = (part.split("=", 1)[1] for part in query.split("&"))
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for tampered in (
        f"{base}?expires={expires}&signature={flipped}",
        f"{base}?expires={int(expires) + 1}&signature={signature}",  # a longer life, same signature
        f"{base}?expires={expires}",
        f"{base}?signature={signature}",
        f"{base}?expires={expires}&signature=",
        f"{base}?expires=-1&signature={signature}",
        f"{base[:-8]}AAAA.png?expires={expires}&signature={signature}",  # another image, same signature
    ):
        answer = httpx.get(tampered, timeout=WAIT_S)
        assert answer.status_code in (403, 404), tampered
        assert answer.headers["content-type"].startswith("application/json")


def test_cross_origin_requests_get_no_cors_grant(server: ServerProcess, api_key: str) -> None:
    """The playground is same-origin; no other site may call the API from a browser with a user's key."""
    evil = {"Origin": "https://evil.example"}
    listed = httpx.get(
        f"{server.base_url}/v1/models", headers={**evil, "Authorization": f"Bearer {api_key}"}, timeout=WAIT_S
    )
    assert listed.status_code == 200 and "access-control-allow-origin" not in listed.headers
    preflight = httpx.options(
        f"{server.base_url}/v1/images/variations",
        headers={**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
        timeout=WAIT_S,
    )
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_no_key_or_secret_in_the_log(server: ServerProcess, server_data_dir: Path, api_key: str) -> None:
    log = server.log()
    # The secret is everything after `vary-<key id>-`; it may itself contain "-".
    assert api_key not in log and api_key.split("-", 2)[2] not in log
    assert (server_data_dir / "secret").read_bytes().hex() not in log
    assert "signature=" not in log


def test_a_stored_object_that_is_not_a_png_is_never_served(own_server: Running) -> None:
    """Whoever else can write to the store (a shared bucket, a shared volume) may put HTML under a valid id:
    even with a valid signature it is refused, never served as image/png; real images are `nosniff`."""
    server, data_dir = own_server.server, own_server.data_dir
    signer = UrlSigner((data_dir / "secret").read_bytes())
    image_id, expires = "a" * 32, int(time.time()) + 600
    (data_dir / "images" / f"{image_id}.png").write_bytes(b"<html><script>alert(document.cookie)</script></html>")
    url = f"{server.base_url}/v1/files/{image_id}.png?expires={expires}&signature={signer.signature(image_id, expires)}"
    foreign = httpx.get(url, timeout=WAIT_S)
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "file_not_found"
    assert b"script" not in foreign.content
    assert server.wait_for_log("is not a PNG")

    real = own_server.post_variation(response_format="url").json()["data"][0]["url"]
    got = httpx.get(real, timeout=WAIT_S)
    assert got.status_code == 200 and got.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(real, timeout=WAIT_S)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "image/png"
