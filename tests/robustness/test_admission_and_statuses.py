"""Admission before decode (a refused request costs no decode) and truthful statuses (4xx for the
client's faults, 499 for hang-ups, in rows, metrics and logs, with no traceback)."""

from __future__ import annotations

import io
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.harness import Running, png_bytes, serve, usage_rows, usage_rows_until
from tests.robustness import hostile
from tests.robustness.hostile import BOUNDARY, MiB
from vary.testing import ServerProcess

WAIT_S = 120
# Ten 1024 px images from tiny-random take seconds on a CPU: the queue stays full meanwhile.
SLOW: dict[str, Any] = {"n": 10, "size": "1024x1024", "response_format": None, "timeout": WAIT_S}


def big_png(side: int = 4096) -> bytes:
    """A 4096x4096 RGB PNG under 4 MB: 256x256 noise blown up 16 times, so it decodes to 48 MiB of pixels."""
    noise = np.random.default_rng(13).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((side, side), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    data = buffer.getvalue()
    assert len(data) < 4 * MiB, len(data)
    return data


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with serve(tmp_path_factory.mktemp("admission"), env={"VARY_QUEUE_SIZE": "1"}) as vary:
        yield vary


def test_refused_requests_do_not_decode_their_images(small_queue: Running) -> None:
    """16 concurrent 4096x4096 uploads against a queue of 1: the 429s cost no decode, so the peak memory
    of the burst stays within a few single requests' worth, not 16 decodes'."""
    server = small_queue.server
    image = big_png()
    assert server.process is not None
    pid = server.process.pid
    # Warm: the first big request's buffers and threads.
    assert small_queue.post_variation(image=image, **SLOW).status_code == 200
    before = hostile.rss(pid)
    hostile.reset_peak(pid)
    assert small_queue.post_variation(image=image, **SLOW).status_code == 200
    one = max(hostile.rss(pid, "VmHWM") - before, 48 * MiB)  # at least the decoded pixels themselves

    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(small_queue.post_variation(image=image, **SLOW)))
        for _ in range(16)
    ]
    before = hostile.rss(pid)
    hostile.reset_peak(pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    burst = hostile.rss(pid, "VmHWM") - before

    assert len(answers) == 16
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 429}, statuses
    assert all(a.json()["error"]["code"] == "queue_full" for a in answers if a.status_code == 429)
    assert statuses.count(429) >= 8, statuses
    assert burst < 4 * one, f"the burst's peak grew {burst / MiB:.0f} MiB; one request: {one / MiB:.0f} MiB"


def usage_statuses(data_dir: Path) -> list[int]:
    return [row.status for row in usage_rows(data_dir)]


def statuses_once(data_dir: Path, status: int, count: int) -> list[int]:
    """The usage rows' statuses once `count` of them are `status` (or at the bound): a row the database could not
    take at once (its busy timeout, a quarter second) is spooled and written a moment later."""
    rows = usage_rows_until(data_dir, lambda rows: [row.status for row in rows].count(status) >= count, timeout=WAIT_S)
    return [row.status for row in rows]


def requests_total(server: ServerProcess, status: int) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=WAIT_S).text
    found = re.findall(rf'vary_requests_total\{{model="[^"]*",status="{status}"\}} ([0-9.]+)', metrics)
    return sum(float(value) for value in found)


IMAGE_PART = ("image", png_bytes(32), "a.png")
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# Bodies that Starlette's multipart parser itself refuses with a 400 (today recorded as 500).
MALFORMED: list[tuple[bytes, str]] = [
    (b"--x\r\n", "multipart/form-data"),  # no boundary
    (hostile.multipart([IMAGE_PART])[0], "multipart/form-data; boundary=other"),
    (hostile.multipart([IMAGE_PART] + [(f"f{i}", b"1", None) for i in range(1000)])[0], MULTIPART),
    (f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(), MULTIPART),  # no name
    (hostile.multipart([IMAGE_PART, ("user", b"u" * MiB, None)])[0], MULTIPART),
]


def test_malformed_multipart_bodies_are_recorded_as_400(small_queue: Running) -> None:
    server, data_dir, key = small_queue.server, small_queue.data_dir, small_queue.key
    before = usage_statuses(data_dir).count(400)
    counted = requests_total(server, 400)
    for body, content_type in MALFORMED:
        answer = httpx.post(
            f"{server.base_url}/v1/images/variations",
            headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
            content=body,
            timeout=WAIT_S,
        )
        assert answer.status_code == 400, answer.text[:300]
    # Polled for, as the 499s below are.
    statuses = statuses_once(data_dir, 400, before + len(MALFORMED))
    assert statuses.count(400) == before + len(MALFORMED), statuses
    assert 500 not in statuses
    assert requests_total(server, 400) == counted + len(MALFORMED)
    assert requests_total(server, 500) == 0


def test_clients_hanging_up_mid_upload_are_recorded_as_499(small_queue: Running) -> None:
    server, data_dir, key = small_queue.server, small_queue.data_dir, small_queue.key
    before = usage_statuses(data_dir).count(499)
    body, content_type = hostile.multipart([("image", hostile.padded_to(png_bytes(32), MiB), "a.png")])
    head = (
        "POST /v1/images/variations HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    assert content_type.endswith(BOUNDARY)
    for _ in range(15):
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as connection:
            connection.sendall(head + body[: len(body) // 2])  # then hang up, half-way through the image
    assert server.wait_for_log('"status": 499')
    statuses = statuses_once(data_dir, 499, before + 15)
    assert statuses.count(499) == before + 15, statuses
    assert 500 not in statuses
    assert "Traceback" not in server.log() and "ClientDisconnect" not in server.log()
