"""What a client sends comes back bounded: long values are cut to 200 characters in messages, log lines and
usage rows; unknown model names share one metrics label; text logs escape control characters. Also HEAD on
image URLs. One live server with text logs."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Running, png_bytes, serve, usage_rows_until

WAIT_S = 60
LONG = 16_000


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = {"VARY_LOG_FORMAT": "text"}
    with serve(tmp_path_factory.mktemp("echoes"), env=env, admin=True, request_timeout=WAIT_S) as vary:
        yield vary


def test_a_long_model_name_is_cut_everywhere(text_server: Running) -> None:
    server = text_server.server
    name = "m" * LONG
    with text_server.http() as http:
        answer = http.post("/v1/images/variations", files={"image": ("a.png", png_bytes(32))}, data={"model": name})
        card = http.get(f"/v1/models/{'n' * 5000}")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert len(answer.json()["error"]["message"]) < 300
    assert card.status_code == 404 and len(card.json()["error"]["message"]) < 300
    assert server.wait_for_log("POST /v1/images/variations 404")
    assert "m" * 201 not in server.log() and "n" * 201 not in server.log()
    rows = usage_rows_until(text_server.data_dir, lambda rows: any(row.status == 404 for row in rows))
    rows = [row for row in rows if row.status == 404]
    assert len(rows) == 1 and rows[0].model is not None
    assert len(rows[0].model) == 200 and rows[0].model.endswith("...")


def test_a_long_path_is_cut_in_the_404(text_server: Running) -> None:
    with text_server.http() as http:
        answer = http.get("/v1/" + "p" * 7000)
    assert answer.status_code == 404 and len(answer.json()["error"]["message"]) < 300


def test_the_admin_api_does_not_echo_a_long_since(text_server: Running) -> None:
    with text_server.http(text_server.admin) as http:
        answer = http.get("/v1/admin/usage", params={"since": "9" * 7000})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "since"
    assert len(answer.json()["error"]["message"]) < 300


def test_unknown_model_names_share_one_metrics_label(text_server: Running) -> None:
    """200 distinct 4 KB model names add one series, not 200: /metrics stays the size it was."""
    with text_server.http() as http:
        before = len(http.get("/metrics").content)
        for i in range(200):
            name = f"{i:04d}" + "x" * 4096
            answer = http.post("/v1/images/variations", files={"image": ("a.png", png_bytes(32))}, data={"model": name})
            assert answer.status_code == 404
        metrics = http.get("/metrics").text
    assert len(metrics) < before + 8 * 1024, f"/metrics grew from {before} to {len(metrics)} bytes"
    counted = re.search(r'vary_requests_total\{model="unknown",status="404"\} ([0-9.]+)', metrics)
    assert counted is not None and float(counted.group(1)) >= 200  # with the other tests' unknown names
    assert "x" * 100 not in metrics


def test_head_on_a_signed_image_url(text_server: Running) -> None:
    with text_server.http() as http:
        url = http.post("/v1/images/variations", files={"image": ("a.png", png_bytes(32))}).json()["data"][0]["url"]
    got = httpx.get(url, timeout=WAIT_S)
    head = httpx.head(url, timeout=WAIT_S)
    assert got.status_code == 200 and head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == "image/png"
    assert int(head.headers["content-length"]) == len(got.content)
    assert httpx.head(url.replace("signature=", "signature=x"), timeout=WAIT_S).status_code == 403


def test_a_newline_in_the_path_cannot_forge_a_text_log_line(text_server: Running) -> None:
    server = text_server.server
    forged = "2026-01-01 00:00:00,000 INFO vary.access: GET /forged 200"
    with text_server.http() as http:
        assert http.get("/v1/x%0a" + forged.replace(" ", "%20") + "%0d%1b[31m").status_code == 404
    assert server.wait_for_log("/v1/x\\n2026-01-01")
    lines = server.log().splitlines()
    assert not any(line.startswith(forged[:30]) for line in lines)
    assert not any(re.search(r"\x1b|\r", line) for line in lines)
