"""The content checks' cost: milliseconds per image for each classifier on the CPU, and what the checks add
to a 1024x1024 n=4 request with input and output checks on (the `safety` stage of its Server-Timing).

- open-nsfw: the built-in classifier (one onnxruntime thread), Yahoo's preprocessing included, on
  1024x1024 images, alone and in a batch of 4.
- guardrail: vary's side of an HTTP guardrail on loopback that answers at once (base64, JSON, HTTP):
  what a real guardrail's own time is added to.
- hf: a ViT image classifier at toy size with random weights, through transformers: the code path's
  cost, not a real model's (Falconsai/nsfw_image_detection is ViT-base, ~86M parameters).
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.load import input_png
from vary.safety.checks import ContentChecks
from vary.safety.classifier import Picture
from vary.safety.policy import SafetyPolicy
from vary.testing import ServerProcess


def images(count: int, side: int = 1024) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


@contextmanager
def loopback_guardrail() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's name
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"action": "NONE"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/guard"
    finally:
        server.shutdown()
        server.server_close()


def tiny_vit(directory: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=224, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1},
    )  # fmt: skip
    ViTForImageClassification(config).eval().save_pretrained(directory)
    processor = {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm: sessions, threads, connections
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def classifier_costs(repeats: int = 10, side: int = 1024) -> list[dict[str, Any]]:
    """ms per image for each classifier, at batch 1 and 4, on `side`-pixel PNGs."""
    pngs = images(4, side)
    rows: list[dict[str, Any]] = []

    async def measure(checks: ContentChecks, policy: SafetyPolicy, name: str) -> None:
        loop = asyncio.get_running_loop()
        for batch in (1, 4):

            def run(batch: int = batch) -> object:
                pictures = [Picture(png) for png in pngs[:batch]]  # decoded anew, as a request's images are
                return asyncio.run_coroutine_threadsafe(checks.check(policy, "output", pictures), loop).result()

            ms = await asyncio.to_thread(_median_ms, run, repeats)
            rows.append({"classifier": name, "batch": batch, "image": f"{side}x{side}", "ms_per_image": ms / batch})

    async def all_of_them(vit: Path, guard: str) -> None:
        checks = ContentChecks()
        try:
            await measure(checks, SafetyPolicy(check="output"), "open-nsfw")
            await measure(checks, SafetyPolicy(check="output", classifier=guard), "guardrail (loopback)")
            await measure(checks, SafetyPolicy(check="output", classifier=f"hf:{vit}"), "hf (toy ViT)")
        finally:
            await checks.aclose()

    with tempfile.TemporaryDirectory() as tmp, loopback_guardrail() as guard:
        asyncio.run(all_of_them(tiny_vit(Path(tmp)), guard))
    return rows


def request_cost(data_dir: Path, requests: int = 5, n: int = 4, size: str = "1024x1024") -> dict[str, Any]:
    """A tiny-random server with input and output checks on (open-nsfw): the safety stage per request."""
    env = {"VARY_SAFETY_CHECK": "both"}
    with ServerProcess(data_dir, extra_args=["--no-auth"], env=env) as server:
        safety, total = [], []
        with httpx.Client(base_url=server.base_url, timeout=600) as client:
            for i in range(requests + 1):
                response = client.post(
                    "/v1/images/variations",
                    files={"image": ("in.png", input_png(), "image/png")},
                    data={"n": str(n), "size": size, "response_format": "b64_json"},
                )
                response.raise_for_status()
                stages = dict(p.split(";dur=") for p in response.headers["server-timing"].split(", "))
                if i:  # the first warms the model and the classifier
                    safety.append(float(stages["safety"]))
                    total.append(float(stages["total"]))
    return {
        "n": n,
        "size": size,
        "safety_p50_ms": statistics.median(safety),
        "total_p50_ms": statistics.median(total),
        "safety_ms_per_image": statistics.median(safety) / (n + 1),  # n outputs and the one input
    }
