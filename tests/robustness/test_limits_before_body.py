"""A key over the limits its key alone decides (requests per minute, concurrency, a quota used up) is refused
before vary reads its upload: the 429 comes while the body has not even been sent. The image-rate check stays
where n is known. Every route that takes a body checks the key first: no key, a wrong key, or a key without
the admin role gets its 401 or 403 while a 20 MiB body is still on the wire."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.harness import Running, create_key, png_bytes, serve
from tests.robustness.hostile import BOUNDARY, multipart
from tests.robustness.test_hostile_input import first_response
from vary.testing import ServerProcess

WAIT_S = 60
UPLOAD_BYTES = 15 * 1024 * 1024  # announced, never sent
LARGE_BODY_BYTES = 20 * 1024 * 1024  # just within the server's body limit, announced, never sent


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, dict[str, str]]]:
    root = tmp_path_factory.mktemp("limits-first")
    keys = {
        "rpm": create_key(root / "data", "rpm", requests_per_minute=1)[1],
        "quota": create_key(root / "data", "quota", image_quota=1)[1],
        "ipm": create_key(root / "data", "ipm", images_per_minute=2)[1],
        "plain": create_key(root / "data", "plain")[1],
    }
    # A body timeout far past the test's wait: only an answer before the body can arrive in time.
    with serve(root, env={"VARY_BODY_TIMEOUT_SECONDS": "600"}, key=False, request_timeout=WAIT_S) as vary:
        yield vary, keys


def complete(received: bytes) -> bool:
    head, found, body = received.partition(b"\r\n\r\n")
    lengths = [
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    ]
    return bool(found and lengths and len(body) >= lengths[0])


def answer_before_the_body(
    server: ServerProcess,
    key: str | None,
    *,
    method: str = "POST",
    path: str = "/v1/images/variations",
    length: int = UPLOAD_BYTES,
    start: bytes | None = None,
) -> tuple[int, dict[str, object]]:
    """Sends the head of a `length`-byte upload and a few bytes of it (a multipart form's unless `start` says),
    then only reads."""
    content_type = f"multipart/form-data; boundary={BOUNDARY}" if start is None else "application/json"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key is not None else "")
        + f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    first = multipart([("image", png_bytes(32), "a.png")])[0][:100] if start is None else start
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as connection:
        connection.sendall(head + first)
        while not complete(received):
            data = connection.recv(65536)  # a server waiting for the body sends nothing: the timeout fails the test
            if not data:
                break
            received += data
    status, content = first_response(received)
    return status, json.loads(content)


@pytest.mark.parametrize(
    ("limit", "refusal"),
    [("rpm", ("message", "requests per min")), ("quota", ("code", "insufficient_quota"))],
    ids=["over-its-request-rate", "its-quota-used-up"],
)
def test_a_key_at_its_limit_is_refused_before_its_upload(
    limited: tuple[Running, dict[str, str]], limit: str, refusal: tuple[str, str]
) -> None:
    vary, keys = limited
    assert vary.post_variation(keys[limit], image=png_bytes(32), n=1).status_code == 200
    status, body = answer_before_the_body(vary.server, keys[limit])
    field, says = refusal
    assert status == 429 and says in body["error"][field]  # type: ignore[index]


def test_the_image_rate_is_still_checked_once_n_is_known(limited: tuple[Running, dict[str, str]]) -> None:
    vary, keys = limited
    refused = vary.post_variation(keys["ipm"], image=png_bytes(32), n=3)
    assert refused.status_code == 429 and "images per min" in refused.json()["error"]["message"]
    assert vary.post_variation(keys["ipm"], image=png_bytes(32), n=2).status_code == 200


BODY_ROUTES = [
    ("PATCH", "/v1/admin/keys/key-1", b'{"safety": "off", "padding": "'),
    ("POST", "/v1/images/variations", None),
    ("POST", "/images/variations", None),
    ("POST", "/openai/deployments/tiny-random/images/variations?api-version=2024-02-01", None),
    ("POST", "/openai/images/variations?api-version=2024-02-01", None),
]


@pytest.mark.parametrize(("method", "path", "start"), BODY_ROUTES, ids=[path for _, path, _ in BODY_ROUTES])
@pytest.mark.parametrize("presented", ["none", "wrong"])
def test_every_route_refuses_a_missing_or_wrong_key_before_its_body(
    limited: tuple[Running, dict[str, str]], method: str, path: str, start: bytes | None, presented: str
) -> None:
    """The 401 comes while a 20 MiB body has not been sent: nothing of it is read, parsed or waited for."""
    vary, _ = limited
    key = None if presented == "none" else "vary-" + "0" * 43
    started = time.monotonic()
    status, body = answer_before_the_body(
        vary.server, key, method=method, path=path, length=LARGE_BODY_BYTES, start=start
    )
    assert status == 401, body
    assert body["error"]["code"] == "invalid_api_key"  # type: ignore[index]
    assert time.monotonic() - started < WAIT_S / 2  # answered, not cut off by the body's own timeout


def test_an_admin_route_refuses_a_key_without_the_admin_role_before_its_body(
    limited: tuple[Running, dict[str, str]],
) -> None:
    vary, keys = limited
    method, path, start = BODY_ROUTES[0]
    status, body = answer_before_the_body(
        vary.server, keys["plain"], method=method, path=path, length=LARGE_BODY_BYTES, start=start
    )
    assert status == 403, body
    assert body["error"]["code"] == "insufficient_permissions"  # type: ignore[index]
