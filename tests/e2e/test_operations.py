"""Operating a live server: per-key limits and their headers, request ids and JSON log lines, metrics,
health and readiness, usage reports (CLI and admin API), and a graceful SIGTERM."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import png_bytes
from vary.key_limits import KeyLimits
from vary.state.database import Database
from vary.testing import ServerProcess

WAIT_S = 60


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ops") / "data"


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[ServerProcess]:
    data_dir.mkdir(parents=True)
    new_key(data_dir, "bootstrap")  # so the server does not print a first key
    srv = ServerProcess(data_dir).start()
    yield srv
    srv.stop()


def new_key(data_dir: Path, name: str, *, admin: bool = False, **limits: int) -> tuple[str, str]:
    db = Database.open(data_dir / "vary.db")
    try:
        info, key = db.create_key(name, admin=admin, limits=KeyLimits(**limits))
        return info.id, key
    finally:
        db.close()


def post(server: ServerProcess, key: str, *, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/images/variations",
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        files={"image": ("a.png", png_bytes())},
        data={"size": "256x256", "response_format": "b64_json", **fields},
        timeout=WAIT_S,
    )


def metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=WAIT_S).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_for_in_flight(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while metrics(server)[("vary_requests_in_flight", ())] != count:
        assert time.monotonic() < deadline, f"never {count} requests in flight"
        time.sleep(0.05)  # poll interval, bounded by the deadline


def vary_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vary", *args], capture_output=True, text=True, timeout=120)


def test_requests_per_minute_hit_exactly_at_the_bound(server: ServerProcess, data_dir: Path) -> None:
    _, key = new_key(data_dir, "rpm", requests_per_minute=3)
    answers = [post(server, key) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
    assert all(a.headers["x-ratelimit-reset-requests"].endswith("s") for a in answers)
    refused = answers[3]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "requests"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["message"].startswith(
        "Rate limit reached for requests per min: Limit 3, Used 3, Requested 1."
    )
    # The openai SDK sees its own RateLimitError.
    with pytest.raises(openai.RateLimitError):
        OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0).images.create_variation(
            image=png_bytes(), size="256x256"
        )


def test_images_per_minute_count_n(server: ServerProcess, data_dir: Path) -> None:
    _, key = new_key(data_dir, "ipm", images_per_minute=5)
    first = post(server, key, n="3")
    assert (first.status_code, first.headers["x-ratelimit-remaining-images"]) == (200, "2")
    refused = post(server, key, n="3")
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "images"
    last = post(server, key, n="2")
    assert (last.status_code, last.headers["x-ratelimit-remaining-images"]) == (200, "0")
    assert "x-ratelimit-limit-requests" not in last.headers  # no request limit on this key


def test_concurrent_requests_per_key(server: ServerProcess, data_dir: Path) -> None:
    _, key = new_key(data_dir, "one-at-a-time", max_concurrent=1)
    slow: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: slow.append(post(server, key, steps="100")))
    worker.start()
    try:
        wait_for_in_flight(server, 1)
        refused = post(server, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["message"].startswith("Rate limit reached for concurrent requests: Limit 1")
    finally:
        worker.join(WAIT_S)
    assert slow[0].status_code == 200
    assert post(server, key).status_code == 200  # the slot came back


def test_the_image_quota(server: ServerProcess, data_dir: Path) -> None:
    key_id, key = new_key(data_dir, "quota", image_quota=4)
    assert post(server, key, n="3").status_code == 200
    refused = post(server, key, n="2")
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "message": "You exceeded your current quota of 4 images per month: 3 used, 2 requested.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert post(server, key, n="1").status_code == 200
    assert post(server, key, n="1").status_code == 429
    # Raising the key's quota with the CLI takes effect from the next request.
    updated = vary_cli("keys", "update", key_id, "--quota", "10", "--data-dir", str(data_dir))
    assert updated.returncode == 0 and "quota=10" in updated.stdout
    assert post(server, key, n="1").status_code == 200


def test_request_ids_on_every_answer_and_one_json_log_line_each(server: ServerProcess, data_dir: Path) -> None:
    key_id, key = new_key(data_dir, "logged")
    ok = post(server, key, n="2", user="user-42", headers={"x-request-id": "client-chosen-id.1"})
    assert ok.headers["x-request-id"] == "client-chosen-id.1"
    generated = post(server, key, headers={"x-request-id": "bad id with spaces"}).headers["x-request-id"]
    assert len(generated) == 32 and all(c in "0123456789abcdef" for c in generated)
    for response in (
        httpx.get(f"{server.base_url}/v1/nope", timeout=WAIT_S),
        httpx.get(f"{server.base_url}/v1/models", timeout=WAIT_S),
        post(server, key, n="11"),
        httpx.get(f"{server.base_url}/healthz", timeout=WAIT_S),
    ):
        assert len(response.headers["x-request-id"]) == 32

    assert server.wait_for_log('"request_id": "client-chosen-id.1"')
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "client-chosen-id.1"]
    assert len(mine) == 1
    line = mine[0]
    assert line["logger"] == "vary.access" and line["level"] == "INFO"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/images/variations", 200)
    assert (line["key_id"], line["user"], line["model"], line["n"], line["size"]) == (
        key_id,
        "user-42",
        "tiny-random",
        2,
        "256x256",
    )
    assert set(line["timings_ms"]) == {"prepare", "queue", "generate", "encode", "total"}
    assert line["duration_ms"] >= line["timings_ms"]["total"]
    assert key not in server.log()
    # The usage row carries the same id.
    db = Database.open(data_dir / "vary.db")
    try:
        assert [row.request_id for row in db.usage_rows(key_id=key_id, user="user-42")] == ["client-chosen-id.1"]
    finally:
        db.close()


def test_metrics_parse_and_move_with_requests(server: ServerProcess, data_dir: Path) -> None:
    _, key = new_key(data_dir, "metrics")
    before = metrics(server)
    assert post(server, key, n="3").status_code == 200
    assert post(server, key, n="99").status_code == 400
    after = metrics(server)

    def moved(name: str, **labels: str) -> float:
        sample = (name, tuple(sorted(labels.items())))
        return after[sample] - before.get(sample, 0.0)

    assert moved("vary_requests_total", model="tiny-random", status="200") == 1
    assert moved("vary_images_generated_total", model="tiny-random") == 3
    for stage in ("prepare", "queue", "generate", "encode", "total"):
        assert moved("vary_request_stage_seconds_count", model="tiny-random", stage=stage) == 1
    assert moved("vary_batch_images_count", model="tiny-random") == 1
    assert moved("vary_batch_images_sum", model="tiny-random") == 3
    assert after[("vary_model_loaded", (("model", "tiny-random"),))] == 1
    assert after[("vary_queue_depth", (("model", "tiny-random"),))] == 0
    assert after[("vary_requests_in_flight", ())] == 0


def test_health_and_readiness(server: ServerProcess, data_dir: Path) -> None:
    assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT_S).json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S)
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "models": {"tiny-random": "loaded"},
        "store": "ok",
        "database": "ok",
        "usage_spooled": 0,
    }
    images = data_dir / "images"
    images.rename(data_dir / "images-away")
    images.write_text("not a directory")  # the store can no longer write, whoever runs the tests
    try:
        broken = httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S)
        assert broken.status_code == 503
        assert broken.json()["status"] == "not ready" and broken.json()["store"].startswith("failing")
    finally:
        images.unlink()
        (data_dir / "images-away").rename(images)
    assert httpx.get(f"{server.base_url}/readyz", timeout=WAIT_S).status_code == 200


def test_usage_reports_equal_what_was_sent(server: ServerProcess, data_dir: Path) -> None:
    key_id, key = new_key(data_dir, "reported", requests_per_minute=3)
    sent = [post(server, key, n="2", user="ann"), post(server, key, n="3", user="ann"), post(server, key, user="bob")]
    sent += [post(server, key, n="99", user="ann"), post(server, key, user="bob")]  # a 400 (not counted), then a 429
    assert [r.status_code for r in sent] == [200, 200, 200, 400, 429]

    report = vary_cli("usage", "--key", key_id, "--format", "json", "--data-dir", str(data_dir))
    assert report.returncode == 0, report.stderr
    rows = {(r["user"], r["model"]): r for r in json.loads(report.stdout)}
    # The 400's form never validated, so its row has no user or model.
    assert rows.keys() == {("ann", "tiny-random"), (None, None), ("bob", "tiny-random")}
    ann = rows[("ann", "tiny-random")]
    assert (ann["requests"], ann["images"], ann["failures"]) == (2, 5, 0)
    assert ann["latency_p50_ms"] <= ann["latency_p95_ms"]
    assert (rows[(None, None)]["requests"], rows[(None, None)]["failures"]) == (1, 1)
    bob = rows[("bob", "tiny-random")]
    assert (bob["requests"], bob["images"], bob["failures"]) == (2, 1, 1)

    only_bob = vary_cli("usage", "--key", key_id, "--user", "bob", "--format", "csv", "--data-dir", str(data_dir))
    assert only_bob.stdout.splitlines()[0].startswith("key_id,user,model,requests,images,failures")
    assert only_bob.stdout.splitlines()[1].startswith(f"{key_id},bob,tiny-random,2,1,1,")
    table = vary_cli("usage", "--key", key_id, "--data-dir", str(data_dir)).stdout
    assert table.splitlines()[0].split() == [
        "key",
        "user",
        "model",
        "requests",
        "images",
        "failures",
        "p50",
        "ms",
        "p95",
        "ms",
        "mean",
        "ms",
    ]
    future = vary_cli(
        "usage", "--key", key_id, "--since", "2999-01-01", "--format", "json", "--data-dir", str(data_dir)
    )
    assert json.loads(future.stdout) == []
    assert "not a date" in vary_cli("usage", "--since", "yesterday", "--data-dir", str(data_dir)).stderr

    # The same numbers through the admin API, for admin keys only.
    _, admin = new_key(data_dir, "admin", admin=True)
    url = f"{server.base_url}/v1/admin/usage"
    answer = httpx.get(url, params={"key": key_id}, headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S)
    assert answer.status_code == 200 and answer.json()["data"] == json.loads(report.stdout)
    not_admin = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=WAIT_S)
    assert not_admin.status_code == 403 and not_admin.json()["error"]["code"] == "insufficient_permissions"
    assert httpx.get(url, timeout=WAIT_S).status_code == 401
    bad_since = httpx.get(url, params={"since": "soon"}, headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S)
    assert bad_since.status_code == 400 and bad_since.json()["error"]["param"] == "since"


def test_sigterm_during_a_request_still_delivers_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _, key = new_key(data_dir, "drain")
    server = ServerProcess(data_dir).start()
    answers: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: answers.append(post(server, key, n="2", steps="100")))
    try:
        worker.start()
        wait_for_in_flight(server, 1)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        worker.join(WAIT_S)
        # uvicorn re-raises the signal once it has shut down cleanly, as supervisors expect.
        assert server.process.wait(WAIT_S) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert answers[0].status_code == 200
    images = [base64.b64decode(item["b64_json"]) for item in answers[0].json()["data"]]
    assert len(images) == 2 and all(image.startswith(b"\x89PNG") for image in images)
    assert not [p for p in (data_dir / "images").iterdir() if not p.name.endswith(".png")], "no temp files left"
    assert "Traceback" not in server.log()
    assert "Finished server process" in server.log()
