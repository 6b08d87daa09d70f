"""A live `vary serve` on loopback and a bounded concurrent load against it, timed from the client."""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from vary.testing import ServerProcess


@contextmanager
def vary_server(model: str, data_dir: Path, timeout: float = 900) -> Iterator[str]:
    """`vary serve --no-auth` for the duration of a measurement; yields its base URL."""
    with ServerProcess(data_dir, model=model, extra_args=["--no-auth"], startup_timeout=timeout) as server:
        yield server.base_url


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
