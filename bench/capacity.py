"""`python -m bench.capacity`: capacity, simulated. How many images per second vary serves through Ray Serve
with N model replicas, and how much CPU its HTTP edge spends per image.

The model replicas run a TIMED STAND-IN engine (bench/timed_engine.py: a fixed wait per batch, no model), so a
machine without GPUs can say where vary itself stops scaling: everything else is real (the Ray Serve proxy,
vary's edge with validation, the usage rows in SQLite and base64 answers, the Ray hop, the replicas' queue,
batching, decode and PNG encode, of frames of noise: a real image's bytes). For each N the application is
deployed on a local Ray cluster that this command starts and stops (ray.init: its own processes only),
loaded by `clients` concurrent clients per replica for `seconds`, and measured:
- images/s answered (HTTP 200), and what N replicas could do at most: N x max_batch_images / batch_seconds;
- the edge replicas' CPU seconds per image (their processes' user + system time, from psutil), Serve's HTTP
  proxy's, the model replicas' (decode, PNG encode, the Ray hop) and this load generator's own (it runs on
  the same cores), each separately.
Prints a markdown table and writes bench/capacity.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
from ray import serve

from bench.load import input_png
from bench.timed_engine import TimedModelReplica
from vary.cluster.deployments import Edge, edge_options, model_deployment_name, shipped_settings
from vary.service.catalogue import Catalogue, CatalogueEntry
from vary.settings import Settings
from vary.testing import free_port

MODEL = "timed"
APP = "vary-capacity"
RESULTS = Path(__file__).with_name("capacity.json")


def application(replicas: int, edges: int, args: argparse.Namespace, data_dir: Path) -> Any:
    settings = Settings(
        data_dir=data_dir,
        no_auth=True,
        max_batch_images=args.max_batch_images,
        queue_size=args.queue_size,
        log_format="json",
        log_level="warning",
    )
    # The edge describes the model from this entry (its engine is never loaded there); requests go to the handle.
    catalogue = Catalogue((CatalogueEntry(name=MODEL, engine="kandinsky-2.2", weights="tiny-random"),), default=MODEL)
    model = TimedModelReplica.options(
        name=model_deployment_name(MODEL),
        num_replicas=replicas,
        max_ongoing_requests=args.queue_size + args.max_batch_images,
        ray_actor_options={"num_cpus": 0.01},  # a "GPU" each: they wait, they do not compute
    ).bind(MODEL, args.batch_seconds, args.max_batch_images, args.queue_size)
    edge_deployment = serve.deployment(name="edge")(Edge)
    options = {**edge_options(catalogue, settings), "num_replicas": edges, "ray_actor_options": {"num_cpus": 0.01}}
    return edge_deployment.options(**options).bind(shipped_settings(settings), catalogue, {MODEL: model}, {})


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def actor_pids(title: str) -> list[int]:
    """This command's own Ray workers titled so (Ray retitles an actor's process "ray::CLASS..."): the
    cluster ray.init started is this process's child, its workers the raylet's."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith(f"ray::{title}"):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


async def load(base: str, *, clients: int, seconds: float, n: int, side: int) -> dict[str, Any]:
    image = input_png(256)
    data = {"model": MODEL, "n": str(n), "size": f"{side}x{side}", "response_format": "b64_json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            answer = await http.post("/v1/images/variations", files={"image": ("in.png", image)}, data=data)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        started = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.monotonic() - started
    ok = statuses.get(200, 0)
    return {
        "elapsed_s": elapsed,
        "requests_ok": ok,
        "images": ok * n,
        "statuses": statuses,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * sorted(latencies)[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
    }


def wait_ready(base: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the application did not get ready")
        time.sleep(1)  # bounded poll


def measure(replicas: int, args: argparse.Namespace, base: str, data_dir: Path) -> dict[str, Any]:
    serve.run(application(replicas, args.edges, args, data_dir), name=APP, route_prefix="/")
    wait_ready(base)
    clients = args.clients_per_replica * replicas
    warm_up = min(5.0, args.seconds)  # connections, caches, the stand-in's noise
    asyncio.run(load(base, clients=clients, seconds=warm_up, n=args.n, side=args.side))
    edges = actor_pids(f"ServeReplica:{APP}:edge")
    proxies = actor_pids("ProxyActor")
    models = actor_pids(f"ServeReplica:{APP}:{model_deployment_name(MODEL)}")
    me = psutil.Process()

    def cpu() -> tuple[float, float, float, float]:
        return cpu_seconds(edges), cpu_seconds(proxies), cpu_seconds(models), sum(me.cpu_times()[:2])

    before = cpu()
    result = asyncio.run(load(base, clients=clients, seconds=args.seconds, n=args.n, side=args.side))
    after = cpu()
    serve.delete(APP)
    images = max(result["images"], 1)
    elapsed = result["elapsed_s"]
    return {
        "replicas": replicas,
        "edges": args.edges,
        "clients": clients,
        **result,
        "images_per_s": result["images"] / elapsed,
        "ceiling_images_per_s": replicas * args.max_batch_images / args.batch_seconds,
        "edge_cpu_ms_per_image": 1000 * (after[0] - before[0]) / images,
        "edge_cpu_cores": (after[0] - before[0]) / elapsed,
        "proxy_cpu_ms_per_image": 1000 * (after[1] - before[1]) / images,
        "replicas_cpu_ms_per_image": 1000 * (after[2] - before[2]) / images,
        "client_cpu_ms_per_image": 1000 * (after[3] - before[3]) / images,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "replicas",
        "clients",
        "images/s",
        "ceiling images/s",
        "p50 ms",
        "p99 ms",
        "edge CPU ms/image",
        "edge cores busy",
        "proxy CPU ms/image",
        "model replicas CPU ms/image",
        "client CPU ms/image",
        "non-200",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        errors = sum(count for status, count in r["statuses"].items() if int(status) != 200)
        cells = [
            str(r["replicas"]),
            str(r["clients"]),
            f"{r['images_per_s']:.1f}",
            f"{r['ceiling_images_per_s']:.0f}",
            f"{r['p50_ms']:.0f}",
            f"{r['p99_ms']:.0f}",
            f"{r['edge_cpu_ms_per_image']:.1f}",
            f"{r['edge_cpu_cores']:.2f}",
            f"{r['proxy_cpu_ms_per_image']:.1f}",
            f"{r['replicas_cpu_ms_per_image']:.1f}",
            f"{r['client_cpu_ms_per_image']:.1f}",
            str(errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2,4,8", help="model replica counts to measure, comma-separated")
    parser.add_argument("--edges", type=int, default=1, help="edge replicas")
    parser.add_argument("--batch-seconds", type=float, default=1.0, help="the stand-in's time per pipeline call")
    parser.add_argument("--max-batch-images", type=int, default=16)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=4, help="images per request")
    parser.add_argument("--side", type=int, choices=(256, 512, 1024), default=1024, help="the images' side")
    parser.add_argument("--clients-per-replica", type=int, default=8, help="concurrent clients per model replica")
    parser.add_argument("--seconds", type=float, default=20.0, help="each measurement's load")
    parser.add_argument("--cpus", type=int, default=32, help="logical CPUs the local Ray cluster offers")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.replicas.split(",")]
    port = free_port()
    # A new local cluster would otherwise turn on Ray's token authentication and write its token to
    # ~/.ray/auth_token, which every later `ray start` of this user then picks up: this cluster is this
    # command's own, on loopback, for a minute, and leaves no such state behind.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=args.cpus,
        num_gpus=0,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),  # short: Ray's socket paths live under it
    )
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        with tempfile.TemporaryDirectory() as data_dir:
            for replicas in counts:
                row = measure(replicas, args, f"http://127.0.0.1:{port}", Path(data_dir))
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {platform.python_version()}"
    print(f"\nCapacity, simulated ({datetime.now(timezone.utc):%Y-%m-%d}; {machine}; the timed stand-in engine:")
    shape = f"n={args.n}, {args.side}x{args.side} noise, b64_json"
    print(f"{args.batch_seconds} s per batch of up to {args.max_batch_images} images; {shape})\n")
    print(table(rows))
    RESULTS.write_text(
        json.dumps({"date": f"{datetime.now(timezone.utc):%Y-%m-%d}", "args": vars(args), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
