"""The Grafana dashboard (deploy/grafana/vary.json) asks only for what vary exports.

Every query's metric names are among the names in a real exposition of vary's Metrics (every family
fed at least once, GPU memory included), and every label it groups by is one those metrics carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vary.ops.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "vary.json"
METRIC = re.compile(r"\b(vary_[a-z0-9_]+)\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped series; and those Ray Serve's metrics export adds to every replica's
# (vary.cluster.metrics_export), absent on one box, where a grouping by them is a grouping by "".
SCRAPE_LABELS = {"instance", "job"}
RAY_SERVE_LABELS = {"deployment", "replica", "application"}


class Model:
    name = "m"
    loaded = True

    def queue_depth(self) -> int:
        return 3


def exposition() -> dict[str, set[str]]:
    """Each sample name vary exports, with its labels."""
    metrics = Metrics(served=["m"])
    metrics.count_request("m", 200)
    metrics.observe_request("m", {"queue": 0.1, "total": 0.2})
    metrics.observe_batch("m", 4, 0.5)
    metrics.observe_attempt("provider", "success", 0.3)
    metrics.observe_check("input", "passed", 0.01)
    metrics.watch([Model()], gpu_memory=lambda: {0: (1.0, 2.0)}, gpu_utilisation=lambda: {0: 0.5})
    metrics.watch_circuits(lambda: {"provider": "closed"})
    metrics.watch_spool(lambda: 2)
    metrics.in_flight.inc()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def queries(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard: panels' targets and the variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


DASHBOARD_JSON = json.loads(DASHBOARD.read_text())
EXPORTED = exposition()


@pytest.mark.parametrize("query", sorted(set(queries(DASHBOARD_JSON))))
def test_every_query_names_metrics_vary_exports_and_their_labels(query: str) -> None:
    named = set(METRIC.findall(query))
    assert named, f"no vary metric in {query!r}"
    assert named <= set(EXPORTED), f"not exported: {named - set(EXPORTED)}"
    labels = set().union(*(EXPORTED[name] for name in named)) | SCRAPE_LABELS | RAY_SERVE_LABELS
    for grouping in GROUPING.findall(query):
        grouped = {label.strip() for label in grouping.split(",") if label.strip()}
        assert grouped <= labels, f"{query!r} groups by {grouped - labels}, which its metrics do not carry"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    everything = " ".join(queries(DASHBOARD_JSON))
    for metric in (
        "vary_requests_total",
        "vary_images_generated_total",
        "vary_request_stage_seconds_bucket",
        "vary_queue_depth",
        "vary_batch_images_bucket",
        "vary_gpu_memory_allocated_bytes",
        "vary_target_attempts_total",
        "vary_target_circuit_state",
        "vary_usage_spool_rows",
        "vary_safety_checks_total",
        "vary_gpu_utilization_ratio",
        "vary_process_cpu_seconds_total",
        "vary_process_resident_memory_bytes",
    ):
        assert metric in everything
    panels = [p for p in DASHBOARD_JSON["panels"] if p["type"] != "row"]
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert len({p["id"] for p in DASHBOARD_JSON["panels"]}) == len(DASHBOARD_JSON["panels"])
