"""`python -m bench.suite OUT_DIR` (what bench/gpu_run.sh runs): the GPU results table in one command.

On the card: its bf16 matmul rate (the arithmetic limit), then per model (Kandinsky 2.2 and FLUX.1 Redux
[schnell], real architectures with seeded random weights: the real arithmetic, nothing downloaded) each case
run by each contender (bench/contenders.py: tuned diffusers, vary in-process, vary over HTTP as b64_json and
url), every case warmed first by the contender that times it. Cases: 512 n=1 and 1024 n=1 (p50/p95), 1024
n=10 (images/s), 1024 n=1 under 16 concurrent clients.

It must end inside its budget (a lease's command limit): each stage's cost is predicted from its FLOPs and the
rate the model has reached so far (at first, 40% of the measured peak), the repeats of what is left are scaled
to the time left, and a stage that cannot fit even its fewest repeats is skipped and recorded as skipped.
Everything measured is in OUT_DIR/results.json as soon as it is measured. `--smoke` runs the same on the CPU
with the tiny twins, where the numbers mean nothing and every code path runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import flops, gpu
from bench.contenders import InProcess, OverHttp, Timing, Tuned, bench_settings, client_process, median, serving
from bench.record import Clock, Record, quiet_loading, say
from vary.engines.diffusion import DiffusionEngine, Placement
from vary.engines.flux_redux import FluxReduxEngine, real_configs, tiny_configs
from vary.engines.kandinsky import KandinskyVariationEngine

# Of the measured peak, the rate a stage is predicted at before the model has run anything.
FIRST_GUESS_EFFICIENCY = 0.4
# Seconds a request costs besides its arithmetic (launches, preprocessing, PNGs), for the predictions.
FIXED_SECONDS = 0.05
CONTENDERS = ("diffusers", "vary", "http-b64_json", "http-url")
# Under concurrent clients: vary in-process (the overhead's base) and its server answering with URLs (OpenAI's
# default format, and the lighter answer for 16 clients at once).
CONCURRENT = ("vary", "http-url")


@dataclass(frozen=True)
class Case:
    side: int
    n: int
    concurrency: int
    target: int  # timed requests when time allows
    least: int  # fewest timed requests worth recording

    @property
    def name(self) -> str:
        return f"{self.side} n={self.n}" + (f" c={self.concurrency}" if self.concurrency > 1 else "")


CASES = (
    Case(512, 1, 1, target=20, least=5),
    Case(1024, 1, 1, target=6, least=2),
    Case(1024, 10, 1, target=2, least=1),
    Case(1024, 1, 16, target=32, least=16),
)


def plan() -> list[tuple[Case, str]]:
    """Each case by each contender, in the order they run: per case, diffusers first (the speed-ups' base), then
    vary in-process (the HTTP overheads' base). Concurrent clients are a server's case: no plain pipeline there
    (its speed-up is against diffusers serving them one at a time, its 1024 n=1)."""
    return [(case, who) for case in CASES for who in CONTENDERS if case.concurrency == 1 or who in CONCURRENT]


@dataclass
class Subject:
    """A model under test: its engine (loaded), and what one request of it costs in FLOPs."""

    name: str
    engine: DiffusionEngine
    request_flops: Callable[[int, int], float]  # (asked side, n) -> FLOPs
    rate: float  # FLOP/s guessed before anything ran
    # FLOP/s reached, by pixels per call (side^2 * images): small calls are launch-bound, large ones are not.
    reached: dict[int, float] = dataclasses.field(default_factory=dict)

    def rate_for(self, case: Case) -> float:
        """The rate of the largest call measured that is no larger than this case's (else the guess)."""
        pixels = case.side**2 * max(case.n, case.concurrency)
        smaller = [size for size in self.reached if size <= pixels]
        return self.reached[max(smaller)] if smaller else self.rate

    def learn(self, case: Case, timing: Timing) -> None:
        pixels = case.side**2 * max(case.n, case.concurrency)
        self.reached[pixels] = timing.images * self.request_flops(case.side, 1) / max(timing.wall_s, 1e-9)

    def predict(self, case: Case, requests: int) -> float:
        """Seconds to warm a case up (one round) and time `requests` of it."""
        per_request = self.request_flops(case.side, case.n) / self.rate_for(case) + FIXED_SECONDS
        if case.concurrency > 1:  # batched: the images cost, a round's fixed costs overlap
            return (case.concurrency + requests) * (per_request - FIXED_SECONDS) + 2 * FIXED_SECONDS
        return (1 + requests) * per_request


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "cpu"
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    host = f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__}"
    if device.type != "cuda":
        return f"no GPU (smoke run on the CPU); {host}"
    props = torch.cuda.get_device_properties(0)
    card = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
    return f"{card}; CUDA {torch.version.cuda}; {host}"


def matmul_peak(device: torch.device) -> float:
    """FLOP/s of a large bf16 matrix product on random data (the median of 50 after warm-ups); on the CPU a
    small float32 one, so the smoke run has a number to divide by."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(150 if device.type == "cuda" else 3):  # about 0.2 s on an H200: its clocks ramp up first
        a @ b
    times = []
    for _ in range(50):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times)


# --- the models -----------------------------------------------------------------------------------


def kandinsky(work: Path, device: torch.device, smoke: bool, placement: Placement | None = None) -> Subject:
    directory = work / "kandinsky"
    if not (directory / "decoder").is_dir():  # built once per run: later engines (bench/tune.py) load the same
        gpu.build_model_dir(directory, smoke=smoke)
    placement = placement or Placement(str(device))
    engine = KandinskyVariationEngine(name="kandinsky-2.2", weights=str(directory), placement=placement)
    engine.load()
    steps = engine.options.steps
    layout = directory if smoke else None

    def request_flops(side: int, n: int) -> float:
        render = engine.options.render_side(side, engine.side_multiple)
        return flops.kandinsky(layout, render, steps).of(n)

    return Subject("kandinsky-2.2", engine, request_flops, rate=0.0)


def flux_schnell(work: Path, device: torch.device, smoke: bool, placement: Placement | None = None) -> Subject:
    """Seeded random weights: every engine built here has the same ones (bench/tune.py compares their images)."""
    placement = placement or Placement(str(device))
    if smoke:  # the tiny twin: toy sizes
        engine: FluxReduxEngine = FluxReduxEngine.tiny_random(name="flux-redux-schnell", placement=placement)  # type: ignore[assignment]
        configs = tiny_configs("schnell")
    else:
        configs = real_configs("schnell")
        engine = FluxReduxEngine.with_random_weights(configs, name="flux-redux-schnell", placement=placement)
    engine.load()
    steps = engine.options.steps

    def request_flops(side: int, n: int) -> float:
        return flops.flux(configs, engine.options.render_side(side, engine.side_multiple), steps).of(n)

    return Subject("flux-redux-schnell", engine, request_flops, rate=0.0)


# --- one model, every case ------------------------------------------------------------------------


@dataclass
class Contenders:
    by_case: dict[str, Any]

    @classmethod
    @contextmanager
    def around(cls, engine: DiffusionEngine, work: Path) -> Iterator[Contenders]:
        settings = bench_settings(work / f"data-{engine.info.id}")
        with ExitStack() as stack:
            base_url = stack.enter_context(serving(engine, settings))
            clients = stack.enter_context(client_process(base_url))
            in_process = InProcess(engine, settings)
            stack.callback(in_process.close)
            yield cls(
                {
                    "diffusers": Tuned(engine),
                    "vary": in_process,
                    "http-b64_json": OverHttp(base_url, engine.info.id, "b64_json", clients),
                    "http-url": OverHttp(base_url, engine.info.id, "url", clients),
                }
            )


def measure(subject: Subject, contenders: Contenders, record: Record, until: float, smoke: bool) -> None:
    stages = plan()
    timings: dict[tuple[str, str], Timing] = {}
    for index, (case, who) in enumerate(stages):
        stage = f"{subject.name} {case.name} {who}"
        left = until - time.time()
        full = sum(subject.predict(c, c.target) for c, _ in stages[index:])
        scale = min(1.0, left / full) if full > 0 else 1.0
        requests = case.least if smoke else max(case.least, math.floor(case.target * scale))
        if case.concurrency > 1:
            requests = max(case.least, requests // case.concurrency * case.concurrency)
        predicted = subject.predict(case, requests)
        if predicted > left:
            record.skip(stage, f"predicted {predicted:.0f} s, {left:.0f} s left for this model")
            continue
        started = time.time()
        try:
            measured = run_stage(contenders.by_case[who], case, requests, until)
        except Exception as exc:  # noqa: BLE001 - one broken stage must not lose the others
            record.skip(stage, f"{type(exc).__name__}: {exc}"[:500])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if isinstance(measured, str):
            record.skip(stage, measured)
            continue
        timing, warm, warm_s = measured
        timings[(case.name, who)] = timing
        subject.learn(case, timing)
        add_row(record, subject, case, who, timing, timings, warm, warm_s)
        record.stage(stage, time.time() - started)
    check_sameness(subject, timings, record)


def run_stage(runner: Any, case: Case, requests: int, until: float) -> tuple[Timing, Timing, float] | str:
    """The case warmed up by this contender (one round), then timed: (timing, warm-up, warm-up seconds), or why
    it was not timed."""
    started = time.time()
    warm = runner.run(case.side, case.n, case.concurrency, case.concurrency, seed=10_000)
    warm_s = time.time() - started
    # The warm-up's own time bounds what the timed part can cost; trim it to what is left.
    per_request = warm_s / case.concurrency if case.concurrency > 1 else warm_s
    requests = min(requests, math.floor((until - time.time()) / max(per_request, 1e-3)))
    if requests < case.least:
        return f"warmed in {warm_s:.1f} s; no time left for {case.least} timed requests"
    timing = runner.run(case.side, case.n, case.concurrency, requests, seed=0)
    if not timing.latencies_ms:
        return "no request succeeded: " + "; ".join(timing.errors[:3])
    return timing, warm, warm_s


def add_row(
    record: Record,
    subject: Subject,
    case: Case,
    who: str,
    timing: Timing,
    timings: dict[tuple[str, str], Timing],
    warm: Timing,
    warm_s: float,
) -> None:
    peak = record.meta["peak_flops"]
    achieved = timing.images_per_s * subject.request_flops(case.side, case.n) / case.n
    tuned = timings.get((f"{case.side} n={case.n}", "diffusers"))
    in_process = timings.get((case.name, "vary"))
    overhead = None
    if who.startswith("http") and in_process is not None:
        if case.concurrency > 1:
            overhead = 1 - timing.images_per_s / in_process.images_per_s
        else:
            overhead = (timing.percentile(50) - in_process.percentile(50)) / timing.percentile(50)
    row = record.row(
        side=case.side,
        case=who,
        n=case.n,
        images_per_s=round(timing.images_per_s, 4),
        p50_ms=round(timing.percentile(50), 1),
        p95_ms=round(timing.percentile(95), 1),
        fraction_of_limit=round(achieved / peak, 4),
        speedup_vs_tuned=round(timing.images_per_s / tuned.images_per_s, 3) if tuned else None,
        overhead_fraction=round(overhead, 4) if overhead is not None else None,
        model=subject.name,
        concurrency=case.concurrency,
        requests=len(timing.latencies_ms),
        tflop_per_image=round(subject.request_flops(case.side, case.n) / case.n / 1e12, 2),
        mean_batch_images=round(statistics.fmean(timing.batch_images), 2) if timing.batch_images else None,
        server_overhead_p50_ms=_rounded(median(timing.server_overhead_ms)),
        warm_s=round(warm_s, 2),
        errors=timing.errors + warm.errors,
    )
    say(
        f"{row['model']} {case.name} {who}: {row['images_per_s']} img/s, p50 {row['p50_ms']} ms, p95 "
        f"{row['p95_ms']} ms, {100 * row['fraction_of_limit']:.1f}% of limit, vs tuned {row['speedup_vs_tuned']}, "
        f"overhead {row['overhead_fraction']}, {len(row['errors'])} errors"
    )


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def check_sameness(subject: Subject, timings: dict[tuple[str, str], Timing], record: Record) -> None:
    """At the same seed, vary's first image against diffusers' and against what HTTP returned: how far apart, in
    levels of 255. The same work gives the same image, up to the GPU's own nondeterminism."""
    for case in CASES:
        vary_timing = timings.get((case.name, "vary"))
        if vary_timing is None or vary_timing.first is None:
            continue
        reference = subject.engine.finish(vary_timing.first[None], case.side)[0]
        for who in ("diffusers", "http-b64_json"):
            other = timings.get((case.name, who))
            if other is None or other.first is None:
                continue
            mine = vary_timing.first if who == "diffusers" else reference
            diff = np.abs(mine.astype(np.int16) - other.first.astype(np.int16))
            record.note(
                f"{subject.name} {case.name}: vary vs {who} at seed 0: max {int(diff.max())}, "
                f"mean {float(diff.mean()):.3f} levels of 255"
            )


# --- the run --------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., Subject]] = {"kandinsky-2.2": kandinsky, "flux-redux-schnell": flux_schnell}


def predicted_full(subject_flops: Callable[[int, int], float], rate: float) -> float:
    probe = Subject("probe", None, subject_flops, rate)  # type: ignore[arg-type]
    return sum(probe.predict(case, case.target) for case, _ in plan())


def run(args: argparse.Namespace) -> Record:
    device = torch.device("cpu" if args.smoke else "cuda")
    clock = Clock(args.started or time.time(), args.budget_s)
    quiet_loading()
    record = Record(args.out, machine(device))
    say(f"machine: {record.machine}; {clock.left():.0f} s left of {args.budget_s:.0f}")
    peak = matmul_peak(device)
    record.set(peak_flops=peak, smoke=args.smoke, budget_s=args.budget_s)
    record.note(f"matmul peak: {peak / 1e12:.1f} TFLOP/s ({'bf16 8192^3' if not args.smoke else 'fp32 512^3, CPU'})")
    # The time is shared between the models by their predicted cost (the smoke run's, evenly).
    guesses = {name: 1.0 if args.smoke else predicted_full(_real_flops(name), FIRST_GUESS_EFFICIENCY * peak)
               for name in args.models}  # fmt: skip
    record.set(predicted_s={name: round(seconds, 1) for name, seconds in guesses.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(args.models):
            later = sum(guesses[n] for n in args.models[index + 1 :])
            share = guesses[name] / (guesses[name] + later)
            try:
                one_model(name, Path(tmp), device, args, record, clock, share)
            except Exception as exc:  # noqa: BLE001 - the next model still gets its time
                record.skip(f"{name} (the rest of it)", f"{type(exc).__name__}: {exc}"[:500])
            gc.collect()  # the model's engine, server and contenders went with one_model's frame
            if device.type == "cuda":
                torch.cuda.empty_cache()
    record.set(elapsed_s=round(clock.elapsed(), 1))
    return record


def one_model(
    name: str, work: Path, device: torch.device, args: argparse.Namespace, record: Record, clock: Clock, share: float
) -> None:
    started = time.time()
    subject = BUILDERS[name](work, device, args.smoke)
    subject.rate = FIRST_GUESS_EFFICIENCY * record.meta["peak_flops"]
    record.stage(f"{name} build", time.time() - started)
    until = time.time() + (clock.left() - args.reserve_s) * share
    say(f"{name}: built in {time.time() - started:.0f} s; measuring for {until - time.time():.0f} s")
    with Contenders.around(subject.engine, work) as contenders:
        measure(subject, contenders, record, until, args.smoke)
    if device.type == "cuda":
        record.note(f"{name}: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB of GPU memory at most")
        torch.cuda.reset_peak_memory_stats()


def _real_flops(name: str) -> Callable[[int, int], float]:
    """A real architecture's request FLOPs at its render sides, before anything is built."""
    if name == "kandinsky-2.2":
        return lambda side, n: flops.kandinsky(None, min(max(side, 512), 1024), 25).of(n)
    configs = real_configs("schnell")
    return lambda side, n: flops.flux(configs, min(max(side, 512), 1024), 4).of(n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    parser.add_argument("out", type=Path, help="where results.json goes (rewritten after every stage)")
    parser.add_argument("--smoke", action="store_true", help="the tiny twins on the CPU: every path, no figures")
    parser.add_argument("--budget-s", type=float, default=450.0, help="end within this many seconds of --started")
    parser.add_argument("--started", type=float, default=0.0, help="when the command began (epoch seconds)")
    parser.add_argument("--reserve-s", type=float, default=15.0, help="kept for shutting down and the summary")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(BUILDERS), help="comma-separated")
    args = parser.parse_args(argv)
    record = run(args)
    from bench.summary import markdown

    text = markdown(record)
    (args.out / "results.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
