"""The three ways a case is run, on one engine's modules (no second copy of the weights):

- `Tuned`: diffusers' own pipeline called directly, as a careful user would: the same modules, sampler, steps,
  dtype and batch as vary (the pipeline vary placed: on the device, channels-last convolutions, diffusers'
  SDPA attention), the same per-image generators, images quantised on the device as vary does.
- `InProcess`: vary's engine behind vary's scheduler (targets/scheduler.py), requests submitted from threads:
  everything vary does but HTTP, decoding the upload and encoding PNGs.
- `OverHttp`: vary's app under uvicorn with vary's HTTP protocol, on loopback, in a thread of this process
  (as `vary serve` runs it, without the copy of the weights a second process would need), driven by the openai
  SDK in a process of its own (bench/clients.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from PIL import Image

from vary.app import build_app, http_protocol
from vary.engines.base import RequestedControls, VariationItem
from vary.engines.diffusion import DiffusionEngine, image_seed
from vary.settings import Settings
from vary.targets.local_model import QueuePolicy
from vary.targets.scheduler import Scheduler
from vary.testing import free_port

INPUT = Image.new("RGB", (256, 256), (180, 90, 40))  # the same input the HTTP clients upload


@dataclass
class Timing:
    """One case's timed requests, as one contender ran them."""

    latencies_ms: list[float]
    images: int
    wall_s: float
    batch_images: list[int] = field(default_factory=list)
    server_overhead_ms: list[float] = field(default_factory=list)  # HTTP: all but the queue and the generation
    errors: list[str] = field(default_factory=list)
    first: np.ndarray | None = None  # the first request's first image (H, W, 3), for the sameness checks

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def frames_of(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] on the device to (N, H, W, 3) uint8 on the host, exactly as vary's generate does."""
    frames = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return frames.cpu().numpy()


def generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(image_seed(seed, k)) for k in range(n)]


class Tuned:
    """diffusers' pipeline called directly (see the module's docstring)."""

    case = "diffusers"

    def __init__(self, engine: DiffusionEngine) -> None:
        self.engine = engine
        self.controls = engine.controls(RequestedControls())

    def once(self, side: int, n: int, seed: int) -> np.ndarray:
        render = self.engine.options.render_side(side, self.engine.side_multiple)  # where vary renders
        with torch.inference_mode():
            pixels = self._pixels(render, n, seed)
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize()
        return frames_of(pixels)

    def _pixels(self, side: int, n: int, seed: int) -> torch.Tensor:
        engine: Any = self.engine
        common = {
            "height": side,
            "width": side,
            "num_inference_steps": self.controls.steps,
            "guidance_scale": self.controls.guidance_scale,
            "num_images_per_prompt": n,
            "generator": generators(seed, n),
            "output_type": "pt",
        }
        if hasattr(engine, "prior"):  # FLUX.1 Redux: the prior pipeline without text encoders, then FLUX.1
            prior = engine.prior(INPUT)
            images = engine.pipeline(
                prompt_embeds=prior.prompt_embeds, pooled_prompt_embeds=prior.pooled_prompt_embeds, **common
            ).images
        else:  # Kandinsky 2.2: the image encoder's embedding and a blank image's, as the prior pipeline makes them
            pixels = engine.image_processor(INPUT, return_tensors="pt").pixel_values
            pixels = pixels.to(engine.device, engine.image_encoder.dtype)
            embeds = engine.image_encoder(pixel_values=pixels).image_embeds
            negative = engine.image_encoder(pixel_values=torch.zeros_like(pixels)).image_embeds
            decoded = engine.pipeline(image_embeds=embeds, negative_image_embeds=negative, **common).images
            images = decoded * 0.5 + 0.5  # its "pt" output is MoVQ's [-1, 1]; "np" and "pil" are rescaled
        result: torch.Tensor = images
        return result

    def run(self, side: int, n: int, concurrency: int, requests: int, seed: int) -> Timing:
        # A plain pipeline serves one call at a time: its clients queue behind each other.
        latencies, first = [], None
        started = time.perf_counter()
        for k in range(requests):
            t0 = time.perf_counter()
            frames = self.once(side, n, seed + k)
            latencies.append((time.perf_counter() - t0) * 1000)
            first = frames[0] if first is None else first
        return Timing(latencies, requests * n, time.perf_counter() - started, [n] * requests, first=first)


class InProcess:
    """vary's engine behind vary's scheduler, with the queue policy the server gets."""

    case = "vary"

    def __init__(self, engine: DiffusionEngine, settings: Settings) -> None:
        self.engine = engine
        policy = QueuePolicy.of(settings)
        self.scheduler = Scheduler(
            engine,
            max_queue=policy.max_queue,
            max_batch_images=policy.max_batch_images,
            retry_after_seconds=policy.retry_after_seconds,
        )
        self.scheduler.start()
        self.controls = engine.controls(RequestedControls())

    def one(self, side: int, n: int, seed: int) -> tuple[np.ndarray, int]:
        conditioning = self.engine.prepare(INPUT, side, self.controls)
        job = self.scheduler.submit(VariationItem(conditioning, n, seed), side, self.controls)
        frames = job.future.result()
        return frames, job.batch_images

    def run(self, side: int, n: int, concurrency: int, requests: int, seed: int) -> Timing:
        latencies: list[float] = []
        batches: list[int] = []
        firsts: dict[int, np.ndarray] = {}
        seeds = iter(range(seed, seed + requests))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    s = next(seeds, None)
                if s is None:
                    return
                t0 = time.perf_counter()
                frames, batch = self.one(side, n, s)
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(elapsed)
                    batches.append(batch)
                    firsts[s] = frames[0]

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(worker) for _ in range(concurrency)]:
                future.result()
        wall = time.perf_counter() - started
        return Timing(latencies, len(latencies) * n, wall, batches, first=firsts.get(seed))

    def close(self) -> None:
        self.scheduler.close()


class OverHttp:
    """vary's server in a thread of this process, the openai SDK in a process of its own."""

    def __init__(self, base_url: str, model: str, response_format: str, clients: subprocess.Popen[str]) -> None:
        self.base_url = base_url
        self.model = model
        self.response_format = response_format
        self.case = f"http-{response_format}"
        self.clients = clients

    def run(self, side: int, n: int, concurrency: int, requests: int, seed: int) -> Timing:
        command = {
            "model": self.model,
            "n": n,
            "size": f"{side}x{side}",
            "response_format": self.response_format,
            "concurrency": concurrency,
            "requests": requests,
            "seed": seed,
            "keep_first": self.response_format == "b64_json",
        }
        assert self.clients.stdin is not None and self.clients.stdout is not None
        self.clients.stdin.write(json.dumps(command) + "\n")
        self.clients.stdin.flush()
        line = self.clients.stdout.readline()
        if not line:
            raise RuntimeError(f"the client process ended (exit {self.clients.poll()})")
        answer = json.loads(line)
        results = answer["results"]
        errors = list(answer["errors"]) + ([f"url check: {answer['url_check']}"] if answer["url_check"] else [])
        first_answer = next((r for r in results if r["seed"] == seed), None)
        first = None
        if first_answer is not None and first_answer["first_b64"]:
            from bench.clients import decode_png

            first = np.asarray(decode_png(first_answer["first_b64"]).convert("RGB"))
        return Timing(
            latencies_ms=[r["ms"] for r in results],
            images=sum(r["images"] for r in results),
            wall_s=answer["wall_s"],
            batch_images=[r["batch_images"] for r in results],
            server_overhead_ms=[r["ms"] - r["generate_ms"] - r["queue_ms"] for r in results],
            errors=errors,
            first=first,
        )


def bench_settings(data_dir: Path, port: int = 0) -> Settings:
    """What `vary serve --no-auth` runs with, on a free loopback port, its data in `data_dir`."""
    return Settings(data_dir=data_dir, host="127.0.0.1", port=port or free_port(), no_auth=True)


@contextmanager
def serving(engine: DiffusionEngine, settings: Settings, timeout: float = 600) -> Iterator[str]:
    """vary's app serving `engine` (already loaded) under uvicorn, as `vary serve` configures it; its lifespan
    warms the engine up as a server's start does. Yields the base URL; stops the server on exit."""
    config = uvicorn.Config(
        build_app(settings, load_engines=lambda _: [engine]),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=http_protocol(settings),
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("vary's server did not start (its log is above)")
        time.sleep(0.05)  # start-up poll, bounded by the deadline
    try:
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(120)


@contextmanager
def client_process(base_url: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.clients", base_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
