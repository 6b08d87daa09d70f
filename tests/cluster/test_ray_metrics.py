"""Metrics from every process under Ray Serve, read as an operator reads them: a real Prometheus (Debian's
binary) scraping a real local Ray cluster's metrics agent with deploy/prometheus/prometheus.yml's `ray` job,
and every query of the Grafana dashboard (deploy/grafana/vary.json) evaluated by that Prometheus.

The application: two edge replicas, two replicas of the tiny-random twin, a hosted provider (a fake on
loopback, so the gateway's attempts and circuit have series) and a route with an input content check.
Load goes through Serve's proxy; then each dashboard query must return data (at least one number), except
the GPU ones (the test cluster has no GPU), which must then be the only empty ones. Each model replica's
series carry its replica's tag, and the edges' counts add up to exactly the requests sent, which a
/metrics scraped through the proxy (one edge replica of two) could not show.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster.prometheus import Prometheus, start_prometheus
from tests.cluster.ray_cluster import RayCluster
from tests.conftest import png_bytes
from tests.fakes.providers import FakeProvider
from tests.unit.test_dashboard import DASHBOARD_JSON, queries
from vary.testing import ServerProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-fake-" + secrets.token_hex(8)
START_TIMEOUT = 480.0  # four replicas load torch at once on two shared cores
WAIT_S = 180.0
RATE_WINDOW = "10m"  # covers the whole run: the counters' increases are inside it


def catalogue(provider: FakeProvider) -> str:
    return f"""
default = "tiny"

[[models]]
name = "tiny"
engine = "kandinsky-2.2"
weights = "tiny-random"
[models.ray]
num_replicas = 2
ray_actor_options = {{ num_cpus = 0.1 }}

[[models]]
name = "hosted"
engine = "openai-compatible"
[models.options]
base_url = "{provider.base_url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
timeout_seconds = 20

[[models]]
name = "checked"
route = ["tiny"]
[models.safety]
check = "input"

[ray.edge]
num_replicas = 2
ray_actor_options = {{ num_cpus = 0.1, runtime_env = {{ env_vars = {{ FAKE_OPENAI_KEY = "{PROVIDER_KEY}" }} }} }}
"""


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider(key=PROVIDER_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def on_ray(
    ray_cluster: RayCluster, provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("ray-metrics")
    (directory / "catalogue.toml").write_text(catalogue(provider))
    server = ServerProcess(
        directory / "data",
        extra_args=["--ray", ray_cluster.address, "--catalogue", str(directory / "catalogue.toml"), "--no-auth"],
        env={"VARY_LOG_FORMAT": "text"},
        port=ray_cluster.serve_port,
        startup_timeout=START_TIMEOUT,
    )
    server.start()
    yield server
    server.stop()


def scrape_config(cluster: RayCluster) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml's `ray` job as it is (its relabelling included), pointed at this
    cluster's agent and scraped each second. (Its discovery file is written by Ray's dashboard, which the
    test cluster does not run: the agent's address is given instead.)"""
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in shipped["scrape_configs"] if job["job_name"] == "ray"]
    job.pop("file_sd_configs")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{cluster.metrics_port}"]}]
    job["scrape_interval"] = "1s"
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}


def as_promql(query: str) -> str:
    """A dashboard query as Prometheus takes it: Grafana's variables filled in, label_values as a query."""
    values = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
    if values:
        return f"count by ({values.group(2)}) ({values.group(1)})"
    return query.replace("$__rate_interval", RATE_WINDOW).replace('"$model"', '".*"')


def numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result if not math.isnan(float(sample["value"][1]))]


def wait_for(prometheus: Prometheus, expr: str, check: Any, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while True:
        result = prometheus.query(expr)
        if check(result):
            return result
        assert time.monotonic() < deadline, f"{what}: {expr} = {result}"
        time.sleep(1)  # Prometheus scrapes each second; replicas publish every few: bounded poll


def post(server: ServerProcess, model: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/images/variations",
        files={"image": ("in.png", png_bytes(64), "image/png")},
        data={"model": model, "size": "256x256", "response_format": "b64_json"},
        timeout=WAIT_S,
    )


def test_every_dashboard_query_has_data_from_every_replica(on_ray: ServerProcess, ray_cluster: RayCluster) -> None:
    prometheus = start_prometheus(scrape_config(ray_cluster))
    try:
        # Two rounds: the first makes every series, which Prometheus then scrapes; the second makes them
        # grow while it watches, so that rates and quantiles have increases to read.
        sent = 0
        for models in (["tiny"] * 3 + ["hosted", "checked"], ["tiny"] * 12 + ["hosted"] * 3 + ["checked"] * 3):
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda model: post(on_ray, model), models))
            assert [a.status_code for a in answers] == [200] * len(models), [a.text[:200] for a in answers]
            sent += len(models)
            images = sum(model in ("tiny", "checked") for model in models)
            # Every request counted once, summed over the edge replicas: the export has both edges' counts.
            wait_for(
                prometheus,
                "sum(vary_requests_total)",
                lambda result, sent=sent: numbers(result) == [float(sent)],
                "the edges' request counts",
            )
            wait_for(
                prometheus,
                'sum(vary_images_generated_total{model="tiny"})',  # the checked route's images are tiny's
                lambda result, images=images: numbers(result) and numbers(result)[0] >= images,
                "the model replicas' images",
            )
        wait_for(
            prometheus,
            'sum(vary_images_generated_total{model="tiny"})',
            lambda result: numbers(result) == [19.0],  # 3 + 1, then 12 + 3
            "the model replicas' images",
        )
        edges = wait_for(
            prometheus,
            'count by (replica) (vary_process_cpu_seconds_total{deployment="edge"})',
            lambda result: len(result) == 2,
            "both edge replicas' process metrics",
        )
        # Each model replica reports its own queue, tagged by model and replica.
        replicas = wait_for(
            prometheus,
            'vary_queue_depth{model="tiny"}',
            lambda result: len({sample["metric"]["replica"] for sample in result}) == 2,
            "both model replicas' queues",
        )
        assert {sample["metric"]["deployment"] for sample in replicas} == {"model-tiny"}
        assert {sample["metric"]["replica"] for sample in edges}.isdisjoint(
            {sample["metric"]["replica"] for sample in replicas}
        )

        empty = []
        for query in sorted(set(queries(DASHBOARD_JSON))):
            expr = as_promql(query)
            result = prometheus.query(expr)
            print(f"{len(numbers(result)):3d} numbers  {expr}")
            if not numbers(result):
                empty.append(query)
        # The test cluster has no GPU (ray start --num-gpus=0): GPU memory and utilisation have no series, and
        # those three are the only queries without data.
        assert sorted(empty) == sorted(query for query in queries(DASHBOARD_JSON) if "vary_gpu_" in query), empty
        assert len(empty) == 3
        assert all(target["health"] == "up" for target in prometheus.targets())
    finally:
        prometheus.stop()
