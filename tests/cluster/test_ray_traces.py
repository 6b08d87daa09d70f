"""Traces across the Ray hop: `vary serve --ray` with the OTEL_* variables, one replica of the tiny twin,
a real OTLP/HTTP receiver on loopback. The replica's span joins the request's trace under the edge's attempt.

Small on purpose (one replica, one request): a Ray cluster's start is the slow part.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.ray_cluster import RayCluster
from tests.fakes.otlp import HttpReceiver, ReceivedSpan
from tests.harness import Running, catalogue, local, png_bytes, serve

pytestmark = pytest.mark.cluster

TENTH_OF_A_CPU = {"ray_actor_options": {"num_cpus": 0.1}}
CATALOGUE = catalogue(local("tiny-random", ray=TENTH_OF_A_CPU), ray={"edge": TENTH_OF_A_CPU})
SERVER_SPAN = "POST /v1/images/variations"


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def on_ray(
    ray_cluster: RayCluster, receiver: HttpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    # The cluster's workers were started without these: `vary serve --ray` forwards its OTEL_* variables.
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "vary-on-ray",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with serve(
        tmp_path_factory.mktemp("ray-traces"),
        catalogue=CATALOGUE,
        args=["--ray", ray_cluster.address, "--log-format", "text"],
        env=env,
        port=ray_cluster.serve_port,
        startup_timeout=420.0,
    ) as vary:
        yield vary


def test_the_replica_s_span_joins_the_request_s_trace(on_ray: Running, receiver: HttpReceiver) -> None:
    client = on_ray.client(timeout=120)
    result = client.images.create_variation(image=png_bytes(64), n=2, size="256x256", response_format="b64_json")
    assert len(result.data) == 2

    def complete(spans: list[ReceivedSpan]) -> bool:
        roots = {s.trace_id for s in spans if s.name == SERVER_SPAN}
        return any(
            {SERVER_SPAN, "vary.replica", "vary.generate"} <= {s.name for s in spans if s.trace_id == t} for t in roots
        )

    spans = receiver.wait_for(complete, timeout=60)
    (trace_id,) = {s.trace_id for s in spans if s.name == SERVER_SPAN}
    mine = {s.span_id: s for s in spans if s.trace_id == trace_id}
    (replica,) = [s for s in mine.values() if s.name == "vary.replica"]
    attempt = mine[replica.parent_id]
    assert attempt.name == "vary.attempt" and attempt.attributes["vary.target"] == "tiny-random"
    assert mine[attempt.parent_id].name == "vary.variation"
    # The replica, another process on another Ray worker, exports under the forwarded service name.
    assert {attempt.resource["service.name"], replica.resource["service.name"]} == {"vary-on-ray"}
    below = {s.name for s in mine.values() if s.parent_id == replica.span_id}
    assert below == {"vary.prepare", "vary.queue", "vary.generate", "vary.encode"}
