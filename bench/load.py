"""A live `vary serve` on loopback and a bounded concurrent load against it, timed from the client."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def vary_server(model: str, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 900) -> Iterator[str]:
    """Starts `vary serve --no-auth` and yields its base URL; stops it by pid."""
    port = _free_port()
    log = open(data_dir.parent / f"server-{port}.log", "wb")
    cmd = [
        sys.executable,
        "-m",
        "vary",
        "serve",
        "--no-auth",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--model",
        model,
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vary serve exited: see {log.name}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vary serve not ready after {timeout}s: see {log.name}")
            time.sleep(0.25)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def input_png(side: int = 256) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (180, 90, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _load(base: str, *, n: int, size: str, fmt: str, concurrency: int, requests: int) -> dict[str, float]:
    image = input_png()
    latencies: list[float] = []
    overheads: list[float] = []
    generate: list[float] = []
    batch_images: list[int] = []
    errors = 0
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            response = await client.post(
                "/v1/images/variations",
                files={"image": ("in.png", image, "image/png")},
                data={"n": str(n), "size": size, "response_format": fmt},
            )
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                errors += 1
                continue
            stages = dict(p.split(";dur=") for p in response.headers["server-timing"].split(", "))
            latencies.append(elapsed * 1000)
            generate.append(float(stages["generate"]))
            # Everything but the pipeline call and the wait for the GPU, as the client sees it.
            overheads.append(elapsed * 1000 - float(stages["generate"]) - float(stages["queue"]))
            batch_images.append(int(response.headers["x-vary-batch-images"]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    done = len(latencies)
    return {
        "requests": done,
        "errors": errors,
        "requests_per_s": done / wall,
        "images_per_s": done * n / wall,
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "p99_ms": _percentile(latencies, 99),
        "generate_p50_ms": statistics.median(generate),
        "overhead_p50_ms": statistics.median(overheads),
        "mean_batch_images": statistics.fmean(batch_images),
    }


def run_load(base: str, **kwargs: object) -> dict[str, float]:
    return asyncio.run(_load(base, **kwargs))  # type: ignore[arg-type]
