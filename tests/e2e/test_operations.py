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
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.harness import Running, metrics, png_bytes, serve, usage_rows

WAIT_S = 60


@pytest.fixture(scope="module")
def vary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # Its key, made before the start, keeps the server from printing a first key.
    # Readiness probed at every call: the test breaks the store and expects /readyz to say so at once.
    env = {"VARY_READYZ_INTERVAL_SECONDS": "0"}
    with serve(tmp_path_factory.mktemp("ops"), env=env, request_timeout=WAIT_S) as running:
        yield running


def wait_for_in_flight(vary: Running, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while metrics(vary.base_url)[("vary_requests_in_flight", ())] != count:
        assert time.monotonic() < deadline, f"never {count} requests in flight"
        time.sleep(0.05)  # poll interval, bounded by the deadline


def vary_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vary", *args], capture_output=True, text=True, timeout=120)


def test_requests_per_minute_hit_exactly_at_the_bound(vary: Running) -> None:
    _, key = vary.new_key("rpm", requests_per_minute=3)
    answers = [vary.post_variation(key) for _ in range(4)]
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
        vary.client(key).images.create_variation(image=png_bytes(), size="256x256")


def test_images_per_minute_count_n(vary: Running) -> None:
    _, key = vary.new_key("ipm", images_per_minute=5)
    first = vary.post_variation(key, n="3")
    assert (first.status_code, first.headers["x-ratelimit-remaining-images"]) == (200, "2")
    refused = vary.post_variation(key, n="3")
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "images"
    last = vary.post_variation(key, n="2")
    assert (last.status_code, last.headers["x-ratelimit-remaining-images"]) == (200, "0")
    assert "x-ratelimit-limit-requests" not in last.headers  # no request limit on this key


def test_concurrent_requests_per_key(vary: Running) -> None:
    _, key = vary.new_key("one-at-a-time", max_concurrent=1)
    slow: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: slow.append(vary.post_variation(key, steps="100")))
    worker.start()
    try:
        wait_for_in_flight(vary, 1)
        refused = vary.post_variation(key)
        assert refused.status_code == 429
        assert refused.json()["error"]["message"].startswith("Rate limit reached for concurrent requests: Limit 1")
    finally:
        worker.join(WAIT_S)
    assert slow[0].status_code == 200
    assert vary.post_variation(key).status_code == 200  # the slot came back


def test_the_image_quota(vary: Running) -> None:
    key_id, key = vary.new_key("quota", image_quota=4)
    assert vary.post_variation(key, n="3").status_code == 200
    refused = vary.post_variation(key, n="2")
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "message": "You exceeded your current quota of 4 images per month: 3 used, 2 requested.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert vary.post_variation(key, n="1").status_code == 200
    assert vary.post_variation(key, n="1").status_code == 429
    # Raising the key's quota with the CLI takes effect from the next request.
    updated = vary_cli("keys", "update", key_id, "--quota", "10", "--data-dir", str(vary.data_dir))
    assert updated.returncode == 0 and "quota=10" in updated.stdout
    assert vary.post_variation(key, n="1").status_code == 200


def test_request_ids_on_every_answer_and_one_json_log_line_each(vary: Running) -> None:
    key_id, key = vary.new_key("logged")
    ok = vary.post_variation(key, n="2", user="user-42", headers={"x-request-id": "client-chosen-id.1"})
    assert ok.headers["x-request-id"] == "client-chosen-id.1"
    generated = vary.post_variation(key, headers={"x-request-id": "bad id with spaces"}).headers["x-request-id"]
    assert len(generated) == 32 and all(c in "0123456789abcdef" for c in generated)
    for response in (
        httpx.get(f"{vary.base_url}/v1/nope", timeout=WAIT_S),
        httpx.get(f"{vary.base_url}/v1/models", timeout=WAIT_S),
        vary.post_variation(key, n="11"),
        httpx.get(f"{vary.base_url}/healthz", timeout=WAIT_S),
    ):
        assert len(response.headers["x-request-id"]) == 32

    assert vary.server.wait_for_log('"request_id": "client-chosen-id.1"')
    lines = [json.loads(line) for line in vary.server.log().splitlines() if line.startswith("{")]
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
    assert key not in vary.server.log()
    # The usage row carries the same id.
    rows = usage_rows(vary.data_dir, key_id=key_id, user="user-42")
    assert [row.request_id for row in rows] == ["client-chosen-id.1"]


def test_metrics_parse_and_move_with_requests(vary: Running) -> None:
    _, key = vary.new_key("metrics")
    before = metrics(vary.base_url)
    assert vary.post_variation(key, n="3").status_code == 200
    assert vary.post_variation(key, n="99").status_code == 400
    after = metrics(vary.base_url)

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


def test_health_and_readiness(vary: Running) -> None:
    assert httpx.get(f"{vary.base_url}/healthz", timeout=WAIT_S).json() == {"status": "ok"}
    ready = httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S)
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "models": {"tiny-random": "loaded"},
        "store": "ok",
        "database": "ok",
        "usage_spooled": 0,
    }
    images = vary.data_dir / "images"
    images.rename(vary.data_dir / "images-away")
    images.write_text("not a directory")  # the store can no longer write, whoever runs the tests
    try:
        broken = httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S)
        assert broken.status_code == 503
        assert broken.json()["status"] == "not ready" and broken.json()["store"].startswith("failing")
    finally:
        images.unlink()
        (vary.data_dir / "images-away").rename(images)
    assert httpx.get(f"{vary.base_url}/readyz", timeout=WAIT_S).status_code == 200


def test_usage_reports_equal_what_was_sent(vary: Running) -> None:
    key_id, key = vary.new_key("reported", requests_per_minute=4)
    sent = [
        vary.post_variation(key, n="2", user="ann"),
        vary.post_variation(key, n="3", user="ann"),
        vary.post_variation(key, user="bob"),
    ]
    sent += [vary.post_variation(key, n="99", user="ann"), vary.post_variation(key, user="bob")]  # a 400, then a 429
    assert [r.status_code for r in sent] == [200, 200, 200, 400, 429]

    report = vary_cli("usage", "--key", key_id, "--format", "json", "--data-dir", str(vary.data_dir))
    assert report.returncode == 0, report.stderr
    rows = {(r["user"], r["model"]): r for r in json.loads(report.stdout)}
    # The 400's form never validated, and the 429 came before the body was read (the request window is the
    # key's alone): neither row has a user or a model.
    assert rows.keys() == {("ann", "tiny-random"), (None, None), ("bob", "tiny-random")}
    ann = rows[("ann", "tiny-random")]
    assert (ann["requests"], ann["images"], ann["failures"]) == (2, 5, 0)
    assert ann["latency_p50_ms"] <= ann["latency_p95_ms"]
    assert (rows[(None, None)]["requests"], rows[(None, None)]["failures"]) == (2, 2)
    bob = rows[("bob", "tiny-random")]
    assert (bob["requests"], bob["images"], bob["failures"]) == (1, 1, 0)

    only_bob = vary_cli("usage", "--key", key_id, "--user", "bob", "--format", "csv", "--data-dir", str(vary.data_dir))
    assert only_bob.stdout.splitlines()[0].startswith("key_id,user,model,requests,images,failures")
    assert only_bob.stdout.splitlines()[1].startswith(f"{key_id},bob,tiny-random,1,1,0,")
    table = vary_cli("usage", "--key", key_id, "--data-dir", str(vary.data_dir)).stdout
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
        "usage", "--key", key_id, "--since", "2999-01-01", "--format", "json", "--data-dir", str(vary.data_dir)
    )
    assert json.loads(future.stdout) == []
    assert "not a date" in vary_cli("usage", "--since", "yesterday", "--data-dir", str(vary.data_dir)).stderr

    # The same numbers through the admin API, for admin keys only.
    _, admin = vary.new_key("admin", admin=True)
    url = f"{vary.base_url}/v1/admin/usage"
    answer = httpx.get(url, params={"key": key_id}, headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S)
    assert answer.status_code == 200 and answer.json()["data"] == json.loads(report.stdout)
    not_admin = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=WAIT_S)
    assert not_admin.status_code == 403 and not_admin.json()["error"]["code"] == "insufficient_permissions"
    assert httpx.get(url, timeout=WAIT_S).status_code == 401
    bad_since = httpx.get(url, params={"since": "soon"}, headers={"Authorization": f"Bearer {admin}"}, timeout=WAIT_S)
    assert bad_since.status_code == 400 and bad_since.json()["error"]["param"] == "since"


def test_sigterm_during_a_request_still_delivers_it(start_server: Callable[..., Running]) -> None:
    vary = start_server(request_timeout=WAIT_S)
    data_dir, server = vary.data_dir, vary.server
    answers: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: answers.append(vary.post_variation(n="2", steps="100")))
    worker.start()
    wait_for_in_flight(vary, 1)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    worker.join(WAIT_S)
    # uvicorn re-raises the signal once it has shut down cleanly, as supervisors expect.
    assert server.process.wait(WAIT_S) in (0, -signal.SIGTERM)
    assert answers[0].status_code == 200
    images = [base64.b64decode(item["b64_json"]) for item in answers[0].json()["data"]]
    assert len(images) == 2 and all(image.startswith(b"\x89PNG") for image in images)
    assert not [p for p in (data_dir / "images").iterdir() if not p.name.endswith(".png")], "no temp files left"
    assert "Traceback" not in server.log()
    assert "Finished server process" in server.log()
