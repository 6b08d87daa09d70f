"""PNG encode (+ store) milliseconds per 1024x1024 image: vary's encoder against Pillow's default."""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vary.imaging import encode_png
from vary.state.local_store import LocalImageStore


def test_images(side: int = 1024) -> dict[str, np.ndarray]:
    """Noise is the worst case for a PNG encoder; the smooth gradient with grain is closer to a photo."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    y, x = np.mgrid[0:side, 0:side]
    smooth = np.stack([(x // 4) % 256, (y // 4) % 256, ((x + y) // 8) % 256], axis=-1)
    grain = rng.integers(-6, 7, smooth.shape)
    return {"noise": noise, "smooth": (smooth + grain).clip(0, 255).astype(np.uint8)}


def pillow_default(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm caches and lazy imports
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure(repeats: int = 15, side: int = 1024) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalImageStore(Path(tmp))
        for name, frame in test_images(side).items():
            vary_bytes = len(encode_png(frame))
            rows.append(
                {
                    "image": f"{side}x{side} {name}",
                    "pillow_default_ms": _median_ms(lambda f=frame: pillow_default(f), max(3, repeats // 3)),
                    "pillow_default_mb": len(pillow_default(frame)) / 1e6,
                    "vary_encode_ms": _median_ms(lambda f=frame: encode_png(f), repeats),
                    "vary_encode_store_ms": _median_ms(lambda f=frame: store.put(encode_png(f)), repeats),
                    "vary_mb": vary_bytes / 1e6,
                }
            )
    return rows
