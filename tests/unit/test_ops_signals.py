"""What an operator reads off one process: histogram buckets that reach the longest request, log times in
RFC 3339 with milliseconds, the process's own CPU and memory, and the GPUs' utilisation when NVML answers."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vary.ops.logs import configure_logging
from vary.ops.metrics import LATENCY_BUCKETS, Metrics
from vary.settings import Settings
from vary.targets.hosted.provider import DEFAULT_DEADLINE_SECONDS

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|[+-]\d{2}:\d{2})$")


class Model:
    name = "m"
    loaded = True

    def queue_depth(self) -> int:
        return 0


def families(metrics: Metrics) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_latency_buckets_reach_the_longest_request_the_defaults_allow() -> None:
    pytest.importorskip("ray.serve")
    from vary.cluster.deployments import REPLICA_ATTEMPTS, longest_request_seconds, replica_resilience

    settings = Settings()
    # Every attempt at a model's Ray deployment, with the backoffs between them; a hosted model's deadline.
    longest = max(longest_request_seconds(settings, attempts=REPLICA_ATTEMPTS), DEFAULT_DEADLINE_SECONDS)
    assert longest > 3 * settings.ray_attempt_timeout_seconds
    finite = [bucket for bucket in LATENCY_BUCKETS if bucket != float("inf")]
    assert finite[-1] >= longest
    # One attempt's limit is a bucket edge: "at the timeout" can be read off the histogram.
    assert replica_resilience(settings).timeout_seconds in finite
    # The buckets are exported as declared: a 1500 s request lands below 1800, not in +Inf.
    metrics = Metrics(served=["m"])
    metrics.observe_request("m", {"total": 1500.0})
    exported = {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "vary_request_stage_seconds_bucket"
    }
    assert exported["1200.0"] == 0 and exported["1800.0"] == 1


def test_process_metrics_are_exported_under_varys_prefix() -> None:
    found = families(Metrics())
    for name in ("vary_process_cpu_seconds_total", "vary_process_resident_memory_bytes", "vary_process_open_fds"):
        assert name in found, sorted(found)


def test_gpu_utilisation_is_a_gauge_per_device_only_where_nvml_answers() -> None:
    metrics = Metrics(served=["m"])
    metrics.watch([Model()], gpu_memory=lambda: {0: (1.0, 2.0)}, gpu_utilisation=lambda: {0: 0.75, 1: 0.0})
    samples = {
        (sample.name, sample.labels.get("device")): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    assert samples[("vary_gpu_utilization_ratio", "0")] == 0.75
    assert samples[("vary_gpu_utilization_ratio", "1")] == 0.0
    quiet = Metrics(served=["m"])
    quiet.watch([Model()], gpu_memory=dict, gpu_utilisation=dict)  # no CUDA in use, no NVML: no series at all
    assert not any(name.startswith("vary_gpu_") for name in families(quiet))


def test_log_times_are_rfc3339_with_milliseconds() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        for log_format in ("json", "text"):
            configure_logging(log_format)
            stream = io.StringIO()
            root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
            logging.getLogger("vary.test").info("hello")
            line = stream.getvalue().strip().splitlines()[-1]
            stamp = json.loads(line)["time"] if log_format == "json" else line.split(" ", 1)[0]
            assert RFC3339_MS.match(stamp), stamp
            if log_format == "json":
                assert stamp.endswith("Z")  # UTC, for collectors
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            assert abs(when.timestamp() - datetime.now().timestamp()) < 60
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
