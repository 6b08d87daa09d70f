"""Prometheus metrics (prometheus-client), on a registry of the app's own so two apps never share one.

Counted as things happen: requests by model and status, each stage's latency, batches, images.
Read at scrape time: queue depth, which models are loaded, GPU memory when CUDA is in use (and the GPUs'
utilisation where NVML answers), the usage rows spooled while the database cannot take them, and the
process's own CPU, memory and file descriptors (prometheus_client's collectors, under the `vary_` prefix).
Under Ray Serve every replica's registry is published through Ray's metrics export (cluster/metrics_export.py).
The Grafana dashboard deploy/grafana/vary.json is drawn from these; tests/unit/test_dashboard.py checks that
every one of its queries names a metric exported here.

The `model` label only takes the served catalogue's names (and "" for a request that named none):
any other name is counted as "unknown", so hostile names cannot add series without end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds: from a cached tiny request up to the longest a request may take: under Ray Serve an attempt may
# take VARY_RAY_ATTEMPT_TIMEOUT_SECONDS (600) and a request three of them (tests/unit/test_ops_signals.py).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300, 600, 1200, 1800, 3600)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 64)
UNKNOWN_MODEL = "unknown"


class Watched(Protocol):
    """A local model, as the scrape-time gauges see it."""

    @property
    def name(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    def queue_depth(self) -> int: ...


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, served: Iterable[str] = ()) -> None:
        self.served = frozenset(served)
        self.registry = CollectorRegistry()
        # vary_process_cpu_seconds_total, vary_process_resident_memory_bytes, vary_process_open_fds, ...
        ProcessCollector(namespace="vary", registry=self.registry)
        self.requests = Counter(
            "vary_requests", "Variation requests by model and HTTP status.", ["model", "status"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "vary_request_stage_seconds",
            "Seconds each variation request spent per stage: prepare, queue, generate, encode, total.",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "vary_batch_images", "Images per pipeline call.", ["model"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "vary_batch_seconds",
            "Seconds per pipeline call.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("vary_images_generated", "Images generated.", ["model"], registry=self.registry)
        # Per target of the gateway; labels are configuration names and a fixed set of outcomes.
        self.attempts = Counter(
            "vary_target_attempts",
            "Attempts at each target, by outcome: success, retryable, configuration, refused, overloaded, unavailable.",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "vary_target_attempt_seconds",
            "Seconds per attempt.",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The content policy's checks: stage is input or output; outcome passed, flagged, failed_open, failed_closed.
        self.safety_checks = Counter(
            "vary_safety_checks",
            "Content checks run, by stage (input, output) and outcome (passed, flagged, failed_open, failed_closed).",
            ["stage", "outcome"],
            registry=self.registry,
        )
        self.safety_seconds = Histogram(
            "vary_safety_check_seconds",
            "Seconds per content check of a batch, by stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vary_requests_in_flight", "Variation requests admitted and not yet answered.", registry=self.registry
        )

    def watch(
        self,
        models: Sequence[Watched],
        *,
        gpu_memory: Callable[[], GpuMemory] | None = None,
        gpu_utilisation: Callable[[], Mapping[int, float]] | None = None,
    ) -> None:
        """Scrape-time gauges over the local models: their queues, whether they are loaded, the GPUs' memory
        and utilisation."""
        self.registry.register(_LiveCollector(models, gpu_memory or cuda_memory, gpu_utilisation or nvml_utilisation))

    def watch_spool(self, rows: Callable[[], int]) -> None:
        """A scrape-time gauge: usage rows waiting in this replica's spool for the database."""
        self.registry.register(_SpoolCollector(rows))

    def serve(self, names: Iterable[str]) -> None:
        """Adds model names that may be labels (the catalogue's, with their aliases)."""
        self.served = self.served | frozenset(names)

    def model_label(self, model: str | None) -> str:
        if not model:
            return ""
        return model if model in self.served else UNKNOWN_MODEL

    def observe_attempt(self, target: str, outcome: str, seconds: float) -> None:
        self.attempts.labels(target, outcome).inc()
        self.attempt_seconds.labels(target).observe(seconds)

    def observe_check(self, stage: str, outcome: str, seconds: float) -> None:
        self.safety_checks.labels(stage, outcome).inc()
        self.safety_seconds.labels(stage).observe(seconds)

    def watch_circuits(self, states: Callable[[], Mapping[str, str]]) -> None:
        """A scrape-time gauge per target and circuit state (closed, open, half-open): 1 for the current one."""
        self.registry.register(_CircuitCollector(states))

    def count_request(self, model: str | None, status: int) -> None:
        self.requests.labels(self.model_label(model), str(status)).inc()

    def observe_request(self, model: str | None, stages: Mapping[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stage_seconds.labels(self.model_label(model), stage).observe(seconds)

    def observe_batch(self, model: str, images: int, seconds: float) -> None:
        self.batch_images.labels(model).observe(images)
        self.batch_seconds.labels(model).observe(seconds)
        self.images.labels(model).inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CircuitCollector(Collector):
    def __init__(self, states: Callable[[], Mapping[str, str]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vary_target_circuit_state", "1 for each target's circuit state now.", labels=["target", "state"]
        )
        for target, current in self.states().items():
            for state in ("closed", "open", "half-open"):
                family.add_metric([target, state], 1.0 if state == current else 0.0)
        yield family


# Per device index: (bytes allocated to tensors, bytes reserved by the caching allocator).
GpuMemory = Mapping[int, tuple[float, float]]


def cuda_memory() -> GpuMemory:
    """Each GPU's memory, once CUDA is in use: asking earlier would create a CUDA context in a CPU-only process."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):  # type: ignore[no-untyped-call]
        return {}
    return {
        index: (float(torch.cuda.memory_allocated(index)), float(torch.cuda.memory_reserved(index)))
        for index in range(torch.cuda.device_count())
    }


def nvml_utilisation() -> Mapping[int, float]:
    """Each GPU's utilisation (0..1) over NVML's last sample period, once CUDA is in use and where NVML answers
    (the driver's libnvidia-ml and the nvidia-ml-py binding torch reads it through); otherwise nothing."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):  # type: ignore[no-untyped-call]
        return {}
    try:
        return {index: torch.cuda.utilization(index) / 100.0 for index in range(torch.cuda.device_count())}
    except Exception:  # noqa: BLE001 - no pynvml, no NVML library, or a GPU NVML cannot read: no gauge
        return {}


class _SpoolCollector(Collector):
    def __init__(self, rows: Callable[[], int]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "vary_usage_spool_rows", "Usage rows spooled, waiting for the database to take them.", value=self.rows()
        )


class _LiveCollector(Collector):
    def __init__(
        self,
        models: Sequence[Watched],
        gpu_memory: Callable[[], GpuMemory],
        gpu_utilisation: Callable[[], Mapping[int, float]],
    ) -> None:
        self.models = models
        self.gpu_memory = gpu_memory
        self.gpu_utilisation = gpu_utilisation

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("vary_queue_depth", "Requests waiting for the model.", labels=["model"])
        for model in self.models:
            depth.add_metric([model.name], model.queue_depth())
        yield depth
        loaded = GaugeMetricFamily("vary_model_loaded", "1 once the model's weights are loaded.", labels=["model"])
        for model in self.models:
            loaded.add_metric([model.name], 1.0 if model.loaded else 0.0)
        yield loaded
        devices = self.gpu_memory()
        if devices:
            allocated = GaugeMetricFamily("vary_gpu_memory_allocated_bytes", "Tensor memory.", labels=["device"])
            reserved = GaugeMetricFamily("vary_gpu_memory_reserved_bytes", "Caching allocator.", labels=["device"])
            for index, (tensors, cached) in devices.items():
                allocated.add_metric([str(index)], tensors)
                reserved.add_metric([str(index)], cached)
            yield allocated
            yield reserved
        busy = self.gpu_utilisation()
        if busy:
            utilisation = GaugeMetricFamily(
                "vary_gpu_utilization_ratio", "Share of time a kernel ran, per NVML (0..1).", labels=["device"]
            )
            for index, ratio in busy.items():
                utilisation.add_metric([str(index)], ratio)
            yield utilisation
