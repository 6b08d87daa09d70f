"""`python -m bench.clients BASE_URL`: the openai SDK as vary's clients, in a process of its own.

It reads one JSON command a line on stdin ({"n", "size", "response_format", "concurrency", "requests",
"seed"}), sends that many requests with that many clients at once through `images.create_variation`, and
answers one JSON line: each request's time as the client saw it (the answer parsed, as the SDK hands it
over), the server's own timings (Server-Timing), the batch each rode in. Its own process, so decoding
megabytes of JSON never takes the server's GIL; long-lived, so the SDK's import is paid once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import time
from typing import Any

import httpx
import openai
from PIL import Image


def input_png(side: int = 256) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (180, 90, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _one(client: openai.AsyncOpenAI, command: dict[str, Any], seed: int, image: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    raw = await client.images.with_raw_response.create_variation(
        image=("in.png", image, "image/png"),
        model=command["model"],
        n=command["n"],
        size=command["size"],
        response_format=command["response_format"],
        extra_body={"seed": seed},
    )
    answer = raw.parse()
    elapsed = time.perf_counter() - started
    stages = dict(part.split(";dur=") for part in raw.headers["server-timing"].split(", "))
    data = answer.data or []
    first = data[0] if data else None
    return {
        "ms": elapsed * 1000,
        "images": len(data),
        "generate_ms": float(stages.get("generate", 0)),
        "queue_ms": float(stages.get("queue", 0)),
        "batch_images": int(raw.headers.get("x-vary-batch-images", 0)),
        "seed": seed,
        "first_b64": first.b64_json if command.get("keep_first") and first is not None else None,
        "first_url": first.url if first is not None else None,
    }


async def run(base_url: str, command: dict[str, Any]) -> dict[str, Any]:
    image = input_png()
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    seeds = iter(range(command.get("seed", 0), command.get("seed", 0) + command["requests"]))
    limits = httpx.Limits(max_connections=command["concurrency"], max_keepalive_connections=command["concurrency"])
    http = httpx.AsyncClient(limits=limits, timeout=900)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0, http_client=http)

    async def worker() -> None:
        for seed in seeds:  # shared: each request is taken by one worker
            try:
                results.append(await _one(client, command, seed, image))
            except openai.OpenAIError as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])

    async with client:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(command["concurrency"])))
        wall = time.perf_counter() - started
        checked = await _check_url(http, results) if command["response_format"] == "url" else None
    return {"results": results, "errors": errors, "wall_s": wall, "url_check": checked}


async def _check_url(http: httpx.AsyncClient, results: list[dict[str, Any]]) -> str | None:
    """A url answer's first image, fetched after the timing: it must be a PNG."""
    url = next((r["first_url"] for r in results if r["first_url"]), None)
    if url is None:
        return "no url in any answer"
    response = await http.get(url)
    if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
        return f"{url}: {response.status_code}, not a PNG"
    return None


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def main() -> None:
    base_url = sys.argv[1]
    for line in sys.stdin:
        if line.strip():
            answer = asyncio.run(run(base_url, json.loads(line)))
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
