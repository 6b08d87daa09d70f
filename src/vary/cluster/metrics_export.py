"""Every Ray Serve replica's metrics, the edge's and each model replica's, through Ray's own metrics export.

Why Ray's export rather than a /metrics of each replica's own for Prometheus to discover: replicas are Ray
actors that come and go (autoscaling, a lost node), several to a node, on ports nobody chose; Ray already
runs one metrics agent per node on a fixed port (`ray start --metrics-export-port`, 8080 under KubeRay), and
that agent is what Ray's own docs and KubeRay's PodMonitors scrape. So nothing new has to be discovered, and a
replica's series leave with it. Ray Serve's metric classes tag each series with its deployment, replica
and application.

How: one daemon thread per replica reads the replica's prometheus_client registry (vary.ops.metrics: the
same metrics as one box's /metrics, process metrics included) twice per Ray report and sets each sample on a
Ray Serve gauge of the same name and labels. Ray's agent exports them prefixed with `ray_`; the scrape
configuration in deploy/prometheus/ strips the prefix from `ray_vary_*`, so the names are one box's and one
dashboard reads both. Counters and histograms travel as gauges holding their running totals: rate(),
increase() and histogram_quantile() read them as they read the originals (a replica that restarts starts
again from zero, which rate() takes as the counter reset it is).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import ray
from prometheus_client import CollectorRegistry
from ray.serve.metrics import Gauge

log = logging.getLogger("vary.ray")

# Ray's default report interval (RAY_metrics_report_interval_ms), where its configuration cannot be read.
RAY_REPORT_INTERVAL_SECONDS = 10.0
# Samples prometheus_client adds that nothing reads: when each series was created.
_SKIPPED_SUFFIXES = ("_created",)


def export_interval_seconds() -> float:
    """Half Ray's report interval: a worker sends the agent the gauge values set since its last report, and the
    agent forgets a series not refreshed within two reports, so a replica sets every value at least once per
    report (with room for a late one)."""
    try:
        report_ms = float(ray._config.metrics_report_interval_ms())
    except Exception:  # noqa: BLE001 - a private API of Ray's: its default where it cannot be read
        report_ms = RAY_REPORT_INTERVAL_SECONDS * 1000
    return max(report_ms, 1000.0) / 2000.0  # Ray reports at most once a second


class RegistryExport:
    """Publishes a prometheus_client registry through Ray's metrics export, every `interval_seconds`.

    `registry` answers None while there is nothing to publish yet (the edge's app has not started).
    """

    def __init__(
        self,
        registry: Callable[[], CollectorRegistry | None],
        *,
        interval_seconds: float | None = None,
    ) -> None:
        self.registry = registry
        self.interval_seconds = interval_seconds or export_interval_seconds()
        self._gauges: dict[tuple[str, tuple[str, ...]], Gauge] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vary-metrics-export", daemon=True)

    def start(self) -> RegistryExport:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def publish(self) -> int:
        """One pass: every sample of the registry set on its Ray gauge; returns how many were set."""
        registry = self.registry()
        if registry is None:
            return 0
        published = 0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name.endswith(_SKIPPED_SUFFIXES) or not math.isfinite(sample.value):
                    continue
                keys = tuple(sorted(sample.labels))
                gauge = self._gauges.get((sample.name, keys))
                if gauge is None:
                    # Ray's annotation says tuple[str]; it means any number of names.
                    gauge = Gauge(
                        sample.name,
                        description=family.documentation or sample.name,
                        tag_keys=keys,  # type: ignore[arg-type]
                    )
                    self._gauges[(sample.name, keys)] = gauge
                gauge.set(sample.value, tags=dict(sample.labels))
                published += 1
        return published

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - a failed round must not end the export; the next one tries again
                log.warning("publishing this replica's metrics to Ray failed", exc_info=True)
