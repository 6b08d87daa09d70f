"""A bounded overload run: many concurrent clients against a small queue, then a check of every answer.

    python -m tests.robustness.overload --requests 5000 --concurrency 64 --queue-size 8

starts its own `vary serve --model tiny-random`, sends a fixed number of requests (each with its own
n and size) within a time limit, and prints a table. Every answer must be a correct 200 (exactly its
own n images, of its own size) or a 429 with Retry-After; anything else counts as an error. The
server's RSS is read idle before the run (after one request of each size), at its peak, and idle
again after the run, once the server has handed freed memory back (`vary.memory`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from tests.harness import post_variation, serve

SIZES = (256, 512)


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # 200s with someone else's images, 429s without Retry-After
    seconds: float = 0.0
    rss_before: int = 0  # idle, before the run
    rss_peak: int = 0
    rss_after: int = 0  # idle again, after the run

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def png(side: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def run(base_url: str, key: str, pid: int, *, requests: int, concurrency: int, time_limit: float) -> Outcome:
    outcome = Outcome(rss_before=settled_rss(pid))
    image = png()
    numbers = iter(range(requests))
    started = time.monotonic()

    async def client(http: httpx.AsyncClient) -> None:
        for i in numbers:
            if time.monotonic() - started > time_limit:
                return
            n, side = 1 + i % 4, SIZES[i % len(SIZES)]
            response = await http.post(
                "/v1/images/variations",
                files={"image": ("a.png", image)},
                data={"n": str(n), "size": f"{side}x{side}", "response_format": "b64_json"},
            )
            outcome.statuses[response.status_code] += 1
            outcome.rss_peak = max(outcome.rss_peak, rss(pid))
            if response.status_code == 200:
                data = response.json()["data"]
                sizes = {Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in data}
                if len(data) != n or sizes != {(side, side)}:
                    outcome.wrong.append(f"request {i}: wanted {n} at {side}, got {len(data)} at {sizes}")
            elif response.status_code == 429 and "retry-after" not in response.headers:
                outcome.wrong.append(f"request {i}: 429 without Retry-After")

    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    outcome.seconds = time.monotonic() - started
    outcome.rss_after = settled_rss(pid)
    return outcome


def settled_rss(pid: int, *, at_least: float = 3.0, at_most: float = 30.0) -> int:
    """RSS once it stops falling: the server trims its heap a couple of seconds after going quiet."""
    deadline, earliest = time.monotonic() + at_most, time.monotonic() + at_least
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss(pid)
        if now >= last and time.monotonic() >= earliest:
            return now
        last = now
    return last


def server_env(queue_size: int) -> dict[str, str]:
    """The server under load: a queue of `queue_size`, batches of up to 16 images, text logs."""
    return {"VARY_QUEUE_SIZE": str(queue_size), "VARY_MAX_BATCH_IMAGES": "16", "VARY_LOG_FORMAT": "text"}


def warm_up(base_url: str, key: str) -> None:
    """One request of each size, so the idle baseline is a server whose model has run, not a cold one."""
    for side in SIZES:
        post_variation(base_url, key, image=png(), size=f"{side}x{side}", response_format=None).raise_for_status()


def table(outcome: Outcome, *, concurrency: int, queue_size: int) -> str:
    mib = 1024 * 1024
    rows = [
        ("requests answered", str(outcome.total)),
        ("concurrency / queue size", f"{concurrency} / {queue_size}"),
        ("200 (each checked: its own n images, its own size)", str(outcome.statuses[200])),
        ("429 with Retry-After", str(outcome.statuses[429])),
        ("other statuses", str(outcome.total - outcome.statuses[200] - outcome.statuses[429])),
        ("wrong or mixed-up answers", str(len(outcome.wrong))),
        ("seconds", f"{outcome.seconds:.1f}"),
        ("server RSS idle before / peak / idle after (MiB)",
         f"{outcome.rss_before / mib:.0f} / {outcome.rss_peak / mib:.0f} / {outcome.rss_after / mib:.0f}"),
    ]  # fmt: skip
    return "\n".join(["| what | figure |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), env=server_env(args.queue_size)) as vary:
        assert vary.server.process is not None
        warm_up(vary.base_url, vary.key)
        outcome = asyncio.run(
            run(vary.base_url, vary.key, vary.server.process.pid, requests=args.requests,
                concurrency=args.concurrency, time_limit=args.time_limit)
        )  # fmt: skip
    print(table(outcome, concurrency=args.concurrency, queue_size=args.queue_size))
    for line in outcome.wrong[:20]:
        print(line)


if __name__ == "__main__":
    main()
