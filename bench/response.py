"""The answer's JSON for n=10 images of 1024x1024 as b64_json: rendered from the pydantic wire models (what
vary does: ImagesResponse.render) against the bytes joined by hand (what vary did until the answer was
built at the edge), and against pydantic writing the base64 strings itself (what render avoids).

Noise is the worst case: its PNGs do not compress, so the base64 strings are the largest an answer holds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pybase64

from bench.png import test_images
from vary.api.protocol import Image, ImagesResponse
from vary.imaging import encode_png


def hand_built(created: int, pngs: list[bytes]) -> bytes:
    """The answer as one join of values already JSON-safe: each base64 string copied once, into the body."""
    parts = [b'{"created":%d,"data":[' % created]
    for i, png in enumerate(pngs):
        parts += [b',{"' if i else b'{"', b"b64_json", b'":"', pybase64.b64encode(png), b'"}']
    parts.append(b"]}")
    return b"".join(parts)


def from_models(created: int, pngs: list[bytes]) -> bytes:
    return ImagesResponse.render(created, pngs, ())


def pydantic_whole(created: int, pngs: list[bytes]) -> bytes:
    """pydantic's JSON writer over the whole answer, base64 strings included."""
    answer = ImagesResponse(created=created, data=[Image(b64_json=pybase64.b64encode_as_string(p)) for p in pngs])
    return answer.model_dump_json(exclude_none=True).encode()


def _median_ms(fn: Callable[[], bytes], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure(n: int = 10, side: int = 1024, repeats: int = 15) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, frame in test_images(side).items():
        pngs = [encode_png(frame)] * n
        assert hand_built(0, pngs) == from_models(0, pngs) == pydantic_whole(0, pngs)  # the same bytes
        rows.append(
            {
                "images": f"{n} x {side}x{side} {name}",
                "answer_mb": len(from_models(0, pngs)) / 1e6,
                "hand_built_ms": _median_ms(lambda p=pngs: hand_built(0, p), repeats),
                "render_ms": _median_ms(lambda p=pngs: from_models(0, p), repeats),
                "pydantic_whole_ms": _median_ms(lambda p=pngs: pydantic_whole(0, p), repeats),
            }
        )
    return rows


def main() -> None:
    rows = measure()
    print(f"{'images':<28} {'answer MB':>10} {'hand-built ms':>14} {'render ms':>10} {'pydantic whole ms':>18}")
    for row in rows:
        print(
            f"{row['images']:<28} {row['answer_mb']:>10.1f} {row['hand_built_ms']:>14.1f} "
            f"{row['render_ms']:>10.1f} {row['pydantic_whole_ms']:>18.1f}"
        )


if __name__ == "__main__":
    main()
