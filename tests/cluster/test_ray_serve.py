"""`vary serve --ray` on a real local Ray cluster: the edge and the tiny-random twins as Ray Serve deployments.

One application serves two deployments of the tiny twin: "tiny-random" with two replicas, and
"tight-serve" whose Serve options bound its requests (Ray's BackPressureError). The deployment is scaled
out as docs/scaling.md shows it: keys, usage and the signing secret in PostgreSQL, images in an S3 bucket
(SeaweedFS). Everything on CPU, with fractions of a CPU per replica: the machine has two cores.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.cluster.postgres import PostgresServer
from tests.cluster.ray_cluster import RayCluster, require_ray
from tests.cluster.seaweedfs import S3Endpoint
from tests.harness import catalogue, decode_png, local, png_bytes, post_variation, serve
from vary.state.database import Database
from vary.testing import ServerProcess, free_port

pytestmark = pytest.mark.cluster

MODEL = "tiny-random"
TENTH_OF_A_CPU = {"ray_actor_options": {"num_cpus": 0.1}}
CATALOGUE = catalogue(
    local(MODEL, ray={"num_replicas": 2, **TENTH_OF_A_CPU}),
    local("tight-serve", ray={**TENTH_OF_A_CPU, "max_ongoing_requests": 1, "max_queued_requests": 1}),
    ray={"edge": TENTH_OF_A_CPU},
)
START_TIMEOUT = 420.0  # three replicas load torch at once on two shared cores
# Finite, so a hang fails the test instead of stalling it; generous, because a burst that takes 40 s on a
# quiet two-core machine takes several times that while something else burns its cores (it timed out at
# 120 s in such a run), and a request that is slow but answered is not what these tests look for.
CLIENT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Shared:
    database_url: str
    bucket: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def shared(postgres_server: PostgresServer, seaweedfs: S3Endpoint) -> Iterator[Shared]:
    """The scaled-out deployment's state: a PostgreSQL database and an S3 bucket of the module's own."""
    name = f"ray_{secrets.token_hex(6)}"
    bucket = f"vary-ray-{secrets.token_hex(4)}"
    database_url = postgres_server.create_database(name)
    seaweedfs.client().create_bucket(Bucket=bucket)
    env = {**seaweedfs.env(), "VARY_DATABASE_URL": database_url, "VARY_STORAGE_URL": f"s3://{bucket}/ray"}
    try:
        yield Shared(database_url, bucket, env)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def key(shared: Shared) -> str:
    db = Database.open(shared.database_url)
    try:
        return db.create_key("ray")[1]
    finally:
        db.close()


@pytest.fixture(scope="module")
def on_ray(
    ray_cluster: RayCluster,
    ray_driver: Any,
    shared: Shared,
    key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    # The cluster's workers were started without the command's environment: the S3 settings reach the
    # edge only because `vary serve --ray` forwards its AWS_* variables (ray_app.with_driver_env).
    with serve(
        tmp_path_factory.mktemp("vary-ray"),
        catalogue=CATALOGUE,
        args=["--ray", ray_cluster.address, "--log-format", "text"],
        env=shared.env,
        key=False,  # the key fixture made it in the shared database
        port=ray_cluster.serve_port,
        startup_timeout=START_TIMEOUT,
    ) as vary:
        yield vary.server
    server = vary.server
    # SIGTERM ended the command cleanly, and with it the serving: the application is gone from the cluster.
    assert server.process is not None and server.process.returncode == 0, server.log()
    assert "vary" not in ray_driver.status().applications


def client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, timeout=CLIENT_TIMEOUT, max_retries=0)


def burst(server: ServerProcess, key: str, model: str, count: int, **fields: str) -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        return post_variation(server.base_url, key, model=model, timeout=CLIENT_TIMEOUT, **fields)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def assert_images_or_error_json(response: httpx.Response) -> None:
    """Every answer is images, or OpenAI's error JSON: never a bare 500, never a hang (the timeout is finite)."""
    if response.status_code == 200:
        data = response.json()["data"]
        assert data and all(decode_png(base64.b64decode(item["b64_json"])).size == (256, 256) for item in data)
        return
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, response.text
    assert error["message"]


def running_replicas(serve: Any, deployment: str) -> int:
    status = serve.status().applications["vary"].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for_replicas(serve: Any, deployment: str, count: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while running_replicas(serve, deployment) != count:
        assert time.monotonic() < deadline, f"{deployment} did not get back to {count} replicas"
        time.sleep(1)  # poll, bounded by the deadline


def test_the_sdk_is_answered_by_two_replicas(
    on_ray: ServerProcess, key: str, ray_driver: Any, shared: Shared, seaweedfs: S3Endpoint
) -> None:
    sdk = client(on_ray, key)
    b64 = sdk.images.create_variation(
        image=("in.png", png_bytes(64)), model=MODEL, n=2, size="256x256", response_format="b64_json"
    )
    assert len(b64.data) == 2
    assert decode_png(base64.b64decode(b64.data[0].b64_json or "")).size == (256, 256)

    url = sdk.images.create_variation(image=("in.png", png_bytes(64)), model=MODEL, size="256x256")
    assert url.data[0].url and url.data[0].url.startswith(on_ray.base_url)
    fetched = httpx.get(url.data[0].url, timeout=CLIENT_TIMEOUT).content
    assert decode_png(fetched).size == (256, 256)
    # The image is an object in the shared bucket, signed with the secret kept in the shared database.
    name = url.data[0].url.split("?")[0].rsplit("/", 1)[1]
    stored = seaweedfs.client().get_object(Bucket=shared.bucket, Key=f"ray/{name}")["Body"].read()
    assert stored == fetched

    answers = burst(on_ray, key, MODEL, 12)
    assert [r.status_code for r in answers] == [200] * 12, [r.text[:200] for r in answers if r.status_code != 200]
    for response in answers:
        assert_images_or_error_json(response)
    assert running_replicas(ray_driver, "model-tiny-random") == 2
    # What Ray's dashboard shows of the application (its deployments' runtime_env included): the S3 store
    # was reached with the secret key, which is nowhere in it.
    from ray.serve.context import _get_global_client

    shown = json.dumps(_get_global_client().get_serve_details(), default=str)
    assert seaweedfs.env()["AWS_ACCESS_KEY_ID"] in shown and seaweedfs.env()["AWS_SECRET_ACCESS_KEY"] not in shown


def test_ray_backpressure_is_a_429_with_retry_after(on_ray: ServerProcess, key: str) -> None:
    answers = burst(on_ray, key, "tight-serve", 12, n="4")
    refused = [r for r in answers if r.status_code == 429]
    assert refused and any(r.status_code == 200 for r in answers), [r.status_code for r in answers]
    assert all(r.status_code in (200, 429) for r in answers), [r.text[:200] for r in answers]
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "queue_full"
    for response in answers:
        assert_images_or_error_json(response)


def test_a_domain_error_raised_in_a_replica_is_answered_as_itself(on_ray: ServerProcess, key: str) -> None:
    # The strength leaves no denoising step: the engine's own check, which runs in the model's replica.
    response = post_variation(on_ray.base_url, key, model=MODEL, strength="0.01", timeout=CLIENT_TIMEOUT)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "strength" and error["type"] == "invalid_request_error"


def test_a_replica_killed_mid_burst_fails_no_request_silently(
    on_ray: ServerProcess, key: str, ray_cluster: RayCluster, ray_driver: Any, shared: Shared
) -> None:
    replicas = ray_cluster.pids_titled("ray::ServeReplica:vary:model-tiny-random")
    assert len(replicas) == 2, replicas
    with ThreadPoolExecutor(16) as pool:
        # Slower batches (more steps), so the kill lands while both replicas hold requests.
        kill_burst = {"model": MODEL, "n": "2", "steps": "40", "user": "kill-burst", "timeout": CLIENT_TIMEOUT}
        futures = [pool.submit(post_variation, on_ray.base_url, key, **kill_burst) for _ in range(16)]
        time.sleep(1.5)  # not a wait for a result: lets the burst reach the replicas before the kill
        os.kill(replicas[0], signal.SIGKILL)
        answers = [future.result() for future in futures]
    for response in answers:
        assert_images_or_error_json(response)
    assert all(r.status_code in (200, 429, 503) for r in answers), [r.text[:200] for r in answers]
    # Every request is accounted for by the edge; the attempts show the retries the kill caused, if any.
    rows = usage_rows(shared.database_url, "kill-burst", 16)
    print("kill-burst:", sorted(r.status_code for r in answers), "attempts:", sorted(r.attempts or 0 for r in rows))

    wait_for_replicas(ray_driver, "model-tiny-random", 2)
    after = burst(on_ray, key, MODEL, 8)
    assert [r.status_code for r in after] == [200] * 8, [r.text[:200] for r in after if r.status_code != 200]


def usage_rows(database_url: str, user: str, count: int, timeout: float = 120.0) -> list[Any]:
    """The edge's usage rows of `user`, once there are `count` (a row is written as its answer leaves)."""
    deadline = time.monotonic() + timeout
    while True:
        db = Database.open(database_url)
        try:
            rows = db.usage_rows(user=user)
        finally:
            db.close()
        if len(rows) >= count or time.monotonic() > deadline:
            assert len(rows) == count, [(r.status, r.attempts) for r in rows]
            return rows
        time.sleep(0.5)  # poll, bounded by the deadline


def test_no_cluster_at_the_address_is_one_clear_line(tmp_path: Path) -> None:
    require_ray()
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vary",
            "serve",
            "--ray",
            address,
            "--model",
            MODEL,
            "--no-auth",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert f"vary: no Ray cluster answers at {address}" in done.stderr
