"""`python -m bench.tune OUT_DIR` (what bench/gpu_tune.sh runs): what vary's compile path buys on the card.

Per model, the eager engine is the reference: its images at fixed seeds and its times for each case (vary
in-process: engine and scheduler), tuned diffusers' at 1024 n=10, and the half precision's own noise: how far
one image moves when only its batch changes (seed 0 rendered alone, and first of ten). Then one change at a
time, each on a fresh engine with the same weights, placed as vary places them (`Placement(compile=True, ...)`,
what VARY_COMPILE turns on): the denoiser compiled; CUDA graphs (compile mode "reduce-overhead"); the decoder
compiled too. Each is warmed up as vary's warm-up does it, then at every served shape, before anything is timed
(that time is reported apart: it is compile time). A change is kept only if its images stay the reference's
(within twice the measured noise, or half a level of 255 on average) and it makes the cases faster (by 3% in
their geometric mean); the next change is tried on top of what was kept. Rows land in OUT_DIR/results.json
as they are measured, within --budget-s.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.contenders import InProcess, Timing, Tuned, bench_settings
from bench.record import Clock, Record, quiet_loading, say
from bench.suite import BUILDERS, Case, Subject, machine, matmul_peak
from vary.engines.diffusion import Placement

CASES = (
    Case(512, 1, 1, target=10, least=3),
    Case(1024, 1, 1, target=4, least=2),
    Case(1024, 10, 1, target=2, least=1),
)
CHANGES = (
    ("compile the denoiser", {"compile": True}),
    ("CUDA graphs (reduce-overhead)", {"compile_mode": "reduce-overhead"}),
    ("compile the decoder", {"compile_decoder": True}),
)
# What a change must gain (geometric mean over the cases) to be kept; what a compile is guessed to cost.
GAIN = 1.03
COMPILE_GUESS_S = {"kandinsky-2.2": 90.0, "flux-redux-schnell": 150.0}


def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Mean and max distance between two uint8 images, in levels of 255."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), int(d.max())


def release() -> None:
    """What the engine just dropped held: its compiled graphs, its memory on the device."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_cases(subject: Subject, work: Path, record: Record, label: str, until: float) -> dict[str, Timing] | None:
    """Each case warmed (first call timed apart), then timed through vary's scheduler; None if time ran out."""
    runner = InProcess(subject.engine, bench_settings(work / "tune-data"))
    timings: dict[str, Timing] = {}
    try:
        for case in CASES:
            started = time.time()
            runner.run(case.side, case.n, 1, 1, seed=10_000)
            first_call = time.time() - started
            per_request = max(first_call, 1e-3) if label == "eager" else None
            budget = until - time.time()
            if per_request is None:  # a compiled first call is mostly compiling: time one more to predict
                started = time.time()
                runner.run(case.side, case.n, 1, 1, seed=10_001)
                per_request = max(time.time() - started, 1e-3)
            requests = min(case.target, math.floor(budget / per_request) - 1)
            if requests < case.least:
                record.skip(f"{subject.name} {label} {case.name}", "no time left to time it")
                return None
            timings[case.name] = timing = runner.run(case.side, case.n, 1, requests, seed=0)
            record.row(
                side=case.side, case=label, n=case.n, images_per_s=round(timing.images_per_s, 4),
                p50_ms=round(timing.percentile(50), 1), p95_ms=round(timing.percentile(95), 1),
                fraction_of_limit=round(timing.images_per_s * subject.request_flops(case.side, case.n) / case.n
                                        / record.meta["peak_flops"], 4),
                model=subject.name, first_call_s=round(first_call, 2), requests=requests,
            )  # fmt: skip
    finally:
        runner.close()
    return timings


def speed(timings: dict[str, Timing]) -> float:
    """One number per engine: the geometric mean over the cases of images/s."""
    return math.exp(statistics.fmean(math.log(t.images_per_s) for t in timings.values()))


def tune_model(
    name: str, work: Path, device: torch.device, args: argparse.Namespace, record: Record, until: float
) -> None:
    measured = reference_of(name, work, device, args, record, until)
    release()  # the eager engine is gone: each change gets the device to itself
    if measured is None:
        return
    reference, noise = measured
    best, best_speed = Placement(str(device)), speed(reference)
    for change, fields in CHANGES:
        candidate = dataclasses.replace(best, **{"compile": True, **fields})
        guess = COMPILE_GUESS_S.get(name, 120.0) + sum(2 * t.wall_s for t in reference.values())
        if until - time.time() < guess:
            record.skip(f"{name}: {change}", f"about {guess:.0f} s needed, {until - time.time():.0f} s left")
            continue
        try:
            timings = variant(name, change, candidate, work, device, args, record, until)
        except Exception as exc:  # noqa: BLE001 - a change that breaks is not kept; the next one is tried
            record.skip(f"{name}: {change}", f"{type(exc).__name__}: {exc}"[:500])
            timings = None
        release()
        if timings is None:
            continue
        if judge(name, change, timings, reference, noise, best_speed, record):
            best, best_speed = candidate, speed(timings)
            record.set(kept={**record.meta["kept"], name: best})
    record.set(kept={**record.meta["kept"], name: best})


def reference_of(
    name: str, work: Path, device: torch.device, args: argparse.Namespace, record: Record, until: float
) -> tuple[dict[str, Timing], tuple[float, int]] | None:
    """The eager engine's times and images, tuned diffusers' at 1024 n=10, and the noise; None if out of time."""
    started = time.time()
    subject = BUILDERS[name](work, device, args.smoke)
    record.stage(f"{name} build (eager)", time.time() - started)
    reference = time_cases(subject, work, record, "eager", until)
    if reference is None:
        return None
    tuned = Tuned(subject.engine)
    tuned.once(1024, 10, 10_000)
    timing = tuned.run(1024, 10, 1, 1, seed=0)
    record.row(side=1024, case="diffusers", n=10, images_per_s=round(timing.images_per_s, 4),
               p50_ms=round(timing.percentile(50), 1), model=name)  # fmt: skip
    alone = InProcess(subject.engine, bench_settings(work / "tune-data"))
    try:
        noise = diff(alone.one(1024, 1, 0)[0][0], reference["1024 n=10"].first)  # type: ignore[arg-type]
    finally:
        alone.close()
    record.note(f"{name}: seed 0 alone vs first of ten, eager: mean {noise[0]:.3f}, max {noise[1]} levels (noise)")
    return reference, noise


def variant(
    name: str,
    change: str,
    placement: Placement,
    work: Path,
    device: torch.device,
    args: argparse.Namespace,
    record: Record,
    until: float,
) -> dict[str, Timing] | None:
    """A fresh engine placed so, through vary's warm-up, then every case warmed and timed."""
    started = time.time()
    subject = BUILDERS[name](work, device, args.smoke, placement)
    subject.engine.warmup()  # vary's own: compiles at every render size
    record.stage(f"{name} {change}: build and vary's warm-up", time.time() - started)
    return time_cases(subject, work, record, change, until)


def judge(
    name: str,
    change: str,
    timings: dict[str, Timing],
    reference: dict[str, Timing],
    noise: tuple[float, int],
    best_speed: float,
    record: Record,
) -> bool:
    """Whether a change is kept: its images within the noise of the reference's, and faster than the best."""
    allowed = max(2 * noise[0], 0.5)
    worst = max(diff(timings[c].first, reference[c].first)[0] for c in timings)  # type: ignore[arg-type]
    gain = speed(timings) / best_speed
    kept = worst <= allowed and gain >= GAIN
    record.note(
        f"{name}: {change}: {'kept' if kept else 'not kept'} (images: mean distance {worst:.3f} levels, allowed "
        f"{allowed:.3f}; speed x{gain:.3f} over the best so far, needs x{GAIN})"
    )
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="the tiny twins on the CPU")
    parser.add_argument("--budget-s", type=float, default=270.0, help="end within this many seconds of --started")
    parser.add_argument("--started", type=float, default=0.0, help="when the command began (epoch seconds)")
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=["kandinsky-2.2"],  # the goals' model; a FLUX.1 compile alone may take minutes
        help=f"comma-separated, of {', '.join(BUILDERS)}",
    )
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    clock = Clock(args.started or time.time(), args.budget_s)
    quiet_loading()
    record = Record(args.out, machine(device), meta={"kind": "tune", "kept": {}})
    record.set(peak_flops=matmul_peak(device), smoke=args.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(args.models):
            share = 1 / (len(args.models) - index)
            until = time.time() + (clock.left() - 10) * share
            try:
                tune_model(name, Path(tmp), device, args, record, until)
            except Exception as exc:  # noqa: BLE001 - what was measured stays; the next model gets its time
                record.skip(f"{name} (the rest of it)", f"{type(exc).__name__}: {exc}"[:500])
            release()
    kept: dict[str, Any] = record.meta["kept"]
    for name, placement in kept.items():
        say(f"{name}: kept {placement}")
    from bench.summary import markdown

    text = markdown(record)
    (args.out / "results.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
