"""The edge's own defences: /readyz probes at most every interval, VARY_ALLOWED_HOSTS refuses other Host
values, and every answer carries the security headers; the playground and the API docs run only vary's own
scripts, from vary itself."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Running, png_bytes, serve

WAIT_S = 60


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = {"VARY_ALLOWED_HOSTS": "127.0.0.1, vary.example, *.vary.example", "VARY_READYZ_INTERVAL_SECONDS": "3600"}
    with serve(tmp_path_factory.mktemp("edge"), env=env) as vary:
        yield vary


def probe_written_at(data_dir: Path) -> float | None:
    with sqlite3.connect(f"file:{data_dir / 'vary.db'}?mode=ro", uri=True) as connection:
        row = connection.execute("SELECT written_at FROM write_probe WHERE id = 1").fetchone()
    return None if row is None else float(row[0])


def test_a_flood_of_readyz_makes_one_probe(edge: Running) -> None:
    server, data_dir = edge.server, edge.data_dir
    first = httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S)
    assert first.status_code == 200 and first.json()["database"] == "ok"
    written = probe_written_at(data_dir)
    assert written is not None
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S).status_code)
        )
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert statuses == [200] * 20
    assert probe_written_at(data_dir) == written  # answered from the last probe: nothing written again
    assert int(httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S).headers["age"]) >= 0


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "127.0.0.2:8000",
        "vary.example.evil.example",
        # Not a host and a port: a wildcard must not match what follows a second colon.
        "evil.example:80:a.vary.example",
        "evil.example:x.vary.example",
        "vary.example:8000:8000",
        "vary.example:",
        "vary.example:80x",
        "[::1",
        "vary.example@evil.example",
    ],
)
def test_a_host_not_allowed_gets_a_400_in_openai_s_shape(edge: Running, host: str) -> None:
    refused = edge.post_variation(image=png_bytes(32), response_format="url", headers={"Host": host}, timeout=WAIT_S)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": {
            "message": "Invalid Host header: this server does not answer for that host.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_host",
        }
    }
    assert httpx.get(f"{edge.base_url}/healthz", headers={"Host": host}, timeout=WAIT_S).status_code == 200


def test_an_allowed_host_is_answered_and_its_urls_use_it(edge: Running) -> None:
    host = f"vary.example:{edge.server.port}"
    answered = edge.post_variation(image=png_bytes(32), response_format="url", headers={"Host": host}, timeout=WAIT_S)
    assert answered.status_code == 200, answered.text
    assert answered.json()["data"][0]["url"].startswith(f"http://{host}/v1/files/")


@pytest.mark.parametrize("path", ["/", "/docs", "/v1/models", "/nowhere"])
def test_every_answer_carries_the_security_headers(edge: Running, path: str) -> None:
    headers = httpx.get(f"{edge.base_url}{path}", timeout=WAIT_S).headers
    policy = {
        part.split(" ", 1)[0]: part for part in (p.strip() for p in headers["content-security-policy"].split(";"))
    }
    assert policy["script-src"] == "script-src 'self'"  # no inline script, no CDN
    assert policy["connect-src"] == "connect-src 'self'"
    assert policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert headers["referrer-policy"] == "no-referrer" and headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/v1/models", "/static/playground.js", "/nowhere", "/docs", "/redoc"])
def test_only_the_api_docs_get_the_relaxations_they_need(edge: Running, path: str) -> None:
    """Swagger UI and ReDoc set inline styles and ReDoc starts a worker from a blob: those two pages, no other."""
    header = httpx.get(f"{edge.base_url}{path}", timeout=WAIT_S).headers["content-security-policy"]
    policy = {part.split(" ", 1)[0]: part for part in (p.strip() for p in header.split(";"))}
    docs = path in ("/docs", "/redoc")
    assert ("'unsafe-inline'" in policy["style-src"]) == docs, header
    assert ("blob:" in policy.get("worker-src", "")) == docs, header
    assert policy["script-src"] == "script-src 'self'"


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
def test_pages_load_only_vary_s_own_scripts_and_styles(edge: Running, page: str) -> None:
    html = httpx.get(f"{edge.base_url}{page}", timeout=WAIT_S).text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts and all(body.strip() == "" and "src=" in attributes for attributes, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I)  # no inline event handlers either
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        if asset.endswith((".js", ".css")):
            assert httpx.get(f"{edge.base_url}{asset}", timeout=WAIT_S).status_code == 200, asset
