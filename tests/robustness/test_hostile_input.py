"""Hostile input through the live server with raw HTTP: every case gets a 4xx in OpenAI's error JSON (or a
correct 200 where the contract accepts it), the server keeps serving, and its memory stays bounded."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import decode_png, png_bytes
from tests.robustness import hostile
from tests.robustness.hostile import MiB, multipart, raw_exchange
from vary.testing import ServerProcess

GIF = hostile.saved(Image.new("P", (32, 32)), format="GIF")
WEBP = hostile.saved(Image.new("RGB", (32, 32)), format="WEBP")
JPEG = hostile.saved(Image.new("RGB", (32, 32)), format="JPEG")
PNG = png_bytes(32)
MULTIPART = f"multipart/form-data; boundary={hostile.BOUNDARY}"
# A well-formed start of an image part, so the server reads on into what never ends.
ENDLESS_IMAGE_HEAD = (
    f'--{hostile.BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()


# (case, image bytes, expected status)
IMAGES: list[tuple[str, bytes, int]] = [
    ("jpeg", JPEG, 400),
    ("gif", GIF, 400),
    ("webp", WEBP, 400),
    ("text", b"this is not an image", 400),
    ("empty", b"", 400),
    ("png signature then garbage", b"\x89PNG\r\n\x1a\n" + b"\xff" * 500, 400),
    *[(f"png truncated at {cut}", PNG[:cut], 400) for cut in (8, 16, 33, 50)],
    ("png without its IEND chunk", PNG[:-12], 200),  # every pixel is there; decoders accept it, so does vary
    ("png with a bad CRC", hostile.bad_crc(PNG), 400),
    ("apng", hostile.apng(), 200),
    ("16-bit grey", hostile.sixteen_bit(), 200),
    ("palette", png_bytes(32, "P"), 200),
    ("grey + alpha", png_bytes(32, "LA"), 200),
    ("1-bit", png_bytes(32, "1"), 200),
    ("interlaced", hostile.interlaced()[0], 200),
    ("1 px off square", png_bytes((32, 31)), 400),
    ("1x1", png_bytes(1), 200),
    ("exactly 4 MiB", hostile.padded_to(PNG, 4 * MiB), 400),
    ("one byte under 4 MiB", hostile.padded_to(PNG, 4 * MiB - 1), 200),
    ("decompression bomb: 100000 px a side declared", hostile.header_only(100_000, 100_000), 400),
    ("zTXt bomb: 64 KB inflating to 64 MB", hostile.text_bomb(PNG), 400),
    ("3 MB tEXt chunk", hostile.big_text(PNG, 3 * MiB), 200),
    ("unicode text chunk", hostile.with_text_info(), 200),
]


def error_shape(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def rss_bytes(server: ServerProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def baseline_rss(server: ServerProcess, api_key: str) -> int:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as c:
        c.post("/v1/images/variations", files={"image": ("a.png", PNG)}, data={"size": "256x256"})  # warm
    return rss_bytes(server)


@pytest.mark.parametrize(("case", "image", "status"), IMAGES, ids=[case for case, _, _ in IMAGES])
def test_hostile_images(http: httpx.Client, case: str, image: bytes, status: int, baseline_rss: int) -> None:
    response = http.post(
        "/v1/images/variations",
        files={"image": ("upload.png", image, "image/png")},
        data={"size": "256x256", "response_format": "b64_json"},
    )
    assert response.status_code == status, response.text[:300]
    if status == 200:
        assert decode_png(base64.b64decode(response.json()["data"][0]["b64_json"])).size == (256, 256)
    else:
        error_shape(response)
        assert response.json()["error"]["param"] == "image"
    assert http.get("/healthz").status_code == 200


def body(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    return multipart(list(parts))


IMAGE_PART = ("image", PNG, "a.png")
# (case, raw body, content type, expected status)
FORMS: list[tuple[str, bytes, str, int]] = [
    ("a field given twice", *body(IMAGE_PART, ("n", b"1", None), ("n", b"2", None)), 400),
    ("the image given twice: two inputs, blended", *body(IMAGE_PART, IMAGE_PART), 200),
    ("the image given six times, one over the limit", *body(*[IMAGE_PART] * 6), 400),
    ("image as a plain field", *body(("image", PNG, None)), 400),
    ("unknown field", *body(IMAGE_PART, ("prompt", b"cat", None)), 400),
    *[(f"n = {value!r}", *body(IMAGE_PART, ("n", value.encode(), None)), 400) for value in ("abc", "1.5", "", " 3 ")],
    ("size in capitals", *body(IMAGE_PART, ("size", b"1024X1024", None)), 400),
    ("response_format in capitals", *body(IMAGE_PART, ("response_format", b"B64_JSON", None)), 400),
    ("n as a file", *body(IMAGE_PART, ("n", b"1", "n.txt")), 400),
    ("a very long field name", *body(IMAGE_PART, ("x" * 20_000, b"1", None)), 400),
    ("1000 parts", *body(IMAGE_PART, *[(f"f{i}", b"1", None) for i in range(1000)]), 400),
    ("a 1 MB field value", *body(IMAGE_PART, ("user", b"u" * MiB, None)), 400),
    ("no image", *body(("n", b"1", None)), 400),
    ("unicode user", *body(IMAGE_PART, ("user", "ünïcødé ✓ 用户 🙂 \u202eevil".encode(), None)), 200),
    ("invalid UTF-8 in user", *body(IMAGE_PART, ("user", b"\xff\xfe\xfd", None)), 200),
    ("not multipart: JSON", b'{"image": "x"}', "application/json", 400),
    ("not multipart: urlencoded", b"image=x&n=1", "application/x-www-form-urlencoded", 400),
    ("no content type", b"image=x", "", 400),
    ("multipart without a boundary", b"--x\r\n", "multipart/form-data", 400),
    ("multipart with a wrong boundary", multipart([IMAGE_PART])[0], "multipart/form-data; boundary=other", 400),
    (
        "multipart cut in the middle",
        multipart([IMAGE_PART])[0][:200],
        MULTIPART,
        400,
    ),
]


@pytest.mark.parametrize(("case", "raw", "content_type", "status"), FORMS, ids=[case for case, *_ in FORMS])
def test_hostile_forms(http: httpx.Client, case: str, raw: bytes, content_type: str, status: int) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = http.post("/v1/images/variations", content=raw, headers=headers, params=None)
    assert response.status_code == status, response.text[:300]
    if status != 200:
        error_shape(response)
        assert len(response.text) < 2000  # never an echo of the hostile input
    assert http.get("/healthz").status_code == 200


def chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def first_response(answer: bytes) -> tuple[int, bytes]:
    """The status and body of the first HTTP response in `answer` (0 when there is none)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return 0, b""
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        len(rest),
    )
    return int(head.split(b" ", 2)[1]), rest[:length]


def request_head(api_key: str, content_type: str, extra: str) -> bytes:
    return (
        "POST /v1/images/variations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: {content_type}\r\n{extra}\r\n"
    ).encode()


RAW: list[tuple[str, Callable[[str], tuple[bytes, list[bytes]]], tuple[int, ...]]] = [
    (
        "Content-Length claims more than is sent, then the client closes",
        lambda key: (request_head(key, MULTIPART, "Content-Length: 100000\r\n"),
                     [multipart([IMAGE_PART])[0]]),
        (0, 400),  # the client is gone: an answer is optional, a crash is not
    ),
    (
        # The bytes past Content-Length read as a second, malformed request: the HTTP layer refuses it
        # (vary.api.http_protocol, in OpenAI's JSON too) and closes.
        "Content-Length claims less than is sent",
        lambda key: (request_head(key, MULTIPART, "Content-Length: 150\r\n"),
                     [multipart([IMAGE_PART])[0]]),
        (400,),
    ),
    (
        "not HTTP at all",
        lambda key: (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello on the plain port\r\n\r\n", []),
        (400,),
    ),
    (
        "Content-Length over the cap",
        lambda key: (request_head(key, MULTIPART, "Content-Length: 999999999\r\n"), []),
        (413,),
    ),
    (
        "an endless chunked body",
        lambda key: (request_head(key, MULTIPART, "Transfer-Encoding: chunked\r\n"),
                     [chunked(ENDLESS_IMAGE_HEAD)] + [chunked(b"a" * 0x10000)] * 400),  # 25 MiB and no end
        (413,),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "statuses"), RAW, ids=[case for case, _, _ in RAW])
def test_lying_and_endless_bodies(
    server: ServerProcess,
    http: httpx.Client,
    api_key: str,
    case: str,
    build: Callable[[str], tuple[bytes, list[bytes]]],
    statuses: tuple[int, ...],
) -> None:
    head, chunks = build(api_key)
    answer = raw_exchange(server.port, head, chunks)
    status, content = first_response(answer)
    assert status in statuses, answer[:300]
    if status:
        assert set(json.loads(content)["error"]) == {"message", "type", "param", "code"}
    assert http.get("/healthz").status_code == 200


def test_memory_stays_bounded(server: ServerProcess, http: httpx.Client, baseline_rss: int) -> None:
    """After every hostile case above (bombs, 4 MiB uploads, endless bodies), the server has not grown much."""
    assert http.get("/healthz").status_code == 200
    grown = rss_bytes(server) - baseline_rss
    assert grown < 300 * MiB, f"resident memory grew by {grown / MiB:.0f} MiB"
