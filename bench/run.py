"""`python -m bench`: measure vary in one run, print markdown tables, write the same as JSON.

CPU part (anywhere): PNG encode per 1024 image; the answer's JSON for ten 1024 images (bench/response.py);
server overhead and request rates with tiny-random; the content checks' cost per image and per request
(bench/safety.py).
GPU part (when CUDA is present): vary through its HTTP server against plain diffusers, on Kandinsky
2.2's real architecture with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench import gpu, load, png, response, safety

Table = tuple[str, list[str], list[list[str]]]


def machine() -> str:
    cpu = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores; {gpu_name}; torch {torch.__version__}"


def png_part(quick: bool) -> tuple[Table, list[dict[str, Any]]]:
    rows = png.measure(repeats=5 if quick else 15)
    body = [
        [
            r["image"],
            f"{r['pillow_default_ms']:.1f}",
            f"{r['vary_encode_ms']:.1f}",
            f"{r['vary_encode_store_ms']:.1f}",
            f"{r['pillow_default_mb']:.2f} / {r['vary_mb']:.2f}",
        ]
        for r in rows
    ]
    head = ["image", "Pillow default ms", "vary encode ms", "vary encode + store ms", "MB (Pillow / vary)"]
    return ("PNG encode, one core", head, body), rows


def response_part(quick: bool) -> tuple[Table, list[dict[str, Any]]]:
    rows = response.measure(repeats=5 if quick else 15)
    body = [
        [
            r["images"],
            f"{r['answer_mb']:.1f}",
            f"{r['hand_built_ms']:.1f}",
            f"{r['render_ms']:.1f}",
            f"{r['pydantic_whole_ms']:.1f}",
        ]
        for r in rows
    ]
    head = ["images (b64_json)", "answer MB", "hand-built ms", "vary's render ms", "pydantic writing it all ms"]
    return ("The answer's JSON, rendered from the wire models", head, body), rows


def safety_part(quick: bool, work: Path) -> tuple[list[Table], dict[str, Any]]:
    rows = safety.classifier_costs(repeats=3 if quick else 10)
    per_image = [[r["classifier"], str(r["batch"]), r["image"], f"{r['ms_per_image']:.1f}"] for r in rows]
    request = safety.request_cost(work / "safety-data", requests=2 if quick else 5)
    per_request = [
        [
            f"{request['size']} n={request['n']}, tiny-random",
            f"{request['safety_p50_ms']:.1f}",
            f"{request['safety_ms_per_image']:.1f}",
            f"{request['total_p50_ms']:.1f}",
        ]
    ]
    tables = [
        ("Content checks on the CPU, per image", ["classifier", "batch", "image", "ms per image"], per_image),
        (
            "Content checks in a request (input and output, open-nsfw)",
            ["request", "safety stage ms", "per image ms", "whole request ms"],
            per_request,
        ),
    ]
    return tables, {"classifiers": rows, "request": request}


def cpu_server_part(quick: bool, work: Path) -> tuple[list[Table], dict[str, Any]]:
    results: dict[str, Any] = {"overhead": [], "throughput": []}
    with load.vary_server("tiny-random", work / "cpu-data") as base:
        for fmt in ("b64_json", "url"):
            r = load.run_load(base, n=10, size="1024x1024", fmt=fmt, concurrency=1, requests=5 if quick else 20)
            results["overhead"].append({"response_format": fmt, **r})
        for concurrency in (1, 16, 64):
            count = {1: 50, 16: 200, 64: 400}[concurrency] // (4 if quick else 1)
            r = load.run_load(base, n=1, size="256x256", fmt="url", concurrency=concurrency, requests=count)
            results["throughput"].append({"concurrency": concurrency, **r})
    overhead = [
        [
            r["response_format"],
            f"{r['p50_ms']:.1f}",
            f"{r['generate_p50_ms']:.1f}",
            f"{r['overhead_p50_ms']:.1f}",
        ]
        for r in results["overhead"]
    ]
    throughput = [
        [
            str(r["concurrency"]),
            str(r["requests"]),
            f"{r['requests_per_s']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['overhead_p50_ms']:.1f}",
            f"{r['mean_batch_images']:.1f}",
            str(r["errors"]),
        ]
        for r in results["throughput"]
    ]
    return [
        (
            "Server overhead with tiny-random, 1024x1024, n=10, one client"
            " (overhead = everything but queue and pipeline)",
            ["response_format", "end-to-end p50 ms", "pipeline p50 ms", "overhead p50 ms"],
            overhead,
        ),
        (
            "Request rate with tiny-random, 256x256, n=1, url",
            [
                "concurrency",
                "requests",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "overhead p50 ms",
                "images per batch",
                "errors",
            ],
            throughput,
        ),
    ], results


GPU_CASES = [(512, 1), (512, 10), (1024, 1), (1024, 10)]


def parse_cases(text: str) -> list[tuple[int, int]]:
    """ "1024:10,512:1" -> [(1024, 10), (512, 1)]: side and n of each GPU case."""
    cases = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part]
    if not all(len(c) == 2 and c[0] in (256, 512, 1024) and 1 <= c[1] <= 10 for c in cases):
        raise argparse.ArgumentTypeError(f"cases look like 1024:10,512:1 (side:n), not {text!r}")
    return [(c[0], c[1]) for c in cases]


def gpu_part(
    quick: bool, smoke: bool, work: Path, peak_tflops: float, cases: list[tuple[int, int]] | None
) -> tuple[list[Table], list[dict[str, Any]]]:
    device = "cpu" if smoke else "cuda"
    model_dir = gpu.build_model_dir(work / "model", smoke=smoke)
    steps = gpu.vary_steps(model_dir)
    cases = cases or ([(256, 1), (256, 3)] if smoke else GPU_CASES)
    rows: list[dict[str, Any]] = []
    with load.vary_server(str(model_dir), work / "gpu-data") as base:
        for side, n in cases:
            size = f"{side}x{side}"
            repeats = 2 if smoke else (4 if quick else 10)
            single = load.run_load(base, n=n, size=size, fmt="b64_json", concurrency=1, requests=repeats)
            concurrency = 4 if n == 10 else 16
            loaded = load.run_load(
                base, n=n, size=size, fmt="b64_json", concurrency=concurrency, requests=repeats * concurrency // 2
            )
            rows.append(
                {"side": side, "n": n, "vary_single": single, "vary_concurrent": loaded, "concurrency": concurrency}
            )
    for row in rows:
        # Both render where vary renders (the asked size for the real model, 64 px for tiny-random).
        render = gpu.vary_render_side(model_dir, row["side"])
        row["baseline"] = gpu.run_baseline(
            model_dir, side=render, n=row["n"], repeats=1 if smoke else (2 if quick else 3), device=device
        )
        vary_flops = gpu.flops_per_image(model_dir, render, steps)
        base_flops = gpu.flops_per_image(model_dir, render, gpu.BASELINE_STEPS)
        best = max(row["vary_single"]["images_per_s"], row["vary_concurrent"]["images_per_s"])
        row["vary_tflops_per_s"] = best * vary_flops / 1e12
        row["baseline_tflops_per_s"] = row["baseline"]["images_per_s"] * base_flops / 1e12
        row["limit_images_per_s"] = peak_tflops * 1e12 / vary_flops
        row["fraction_of_limit"] = best / row["limit_images_per_s"]
        row["speedup"] = best / row["baseline"]["images_per_s"]
        single = row["vary_single"]
        row["overhead_fraction"] = single["overhead_p50_ms"] / single["p50_ms"]
    body = [
        [
            f"{r['side']}",
            str(r["n"]),
            f"{r['baseline']['images_per_s']:.2f}",
            f"{r['baseline']['p50_ms']:.0f}",
            f"{r['vary_single']['images_per_s']:.2f}",
            f"{r['vary_single']['p50_ms']:.0f} / {r['vary_single']['p95_ms']:.0f}",
            f"{r['vary_concurrent']['images_per_s']:.2f} (c={r['concurrency']})",
            f"{r['vary_concurrent']['p50_ms']:.0f} / {r['vary_concurrent']['p95_ms']:.0f}",
            f"{r['speedup']:.2f}x",
            f"{r['vary_tflops_per_s']:.0f}",
            f"{100 * r['fraction_of_limit']:.0f}%",
            f"{100 * r['overhead_fraction']:.1f}%",
        ]
        for r in rows
    ]
    head = [
        "side", "n", "diffusers img/s", "diffusers p50 ms", "vary img/s (1 client)", "vary p50/p95 ms",
        "vary img/s (loaded)", "loaded p50/p95 ms", "speed-up", "vary TFLOP/s", "of limit", "server overhead",
    ]  # fmt: skip
    title = (
        f"{'Smoke run (tiny-random on CPU): numbers mean nothing' if smoke else 'GPU'}: vary ({steps} steps, "
        f"through HTTP) vs plain diffusers KandinskyV22Pipeline ({gpu.BASELINE_STEPS} steps, direct call); "
        f"limit = {peak_tflops:.0f} TFLOP/s"
    )
    return [(title, head, body)], rows


def markdown(tables: list[Table]) -> str:
    out = []
    for title, head, body in tables:
        out.append(f"### {title}\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        out.extend("| " + " | ".join(row) + " |" for row in body)
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (minutes, not tens of minutes)")
    parser.add_argument("--smoke", action="store_true", help="run the GPU part with tiny-random on the CPU")
    parser.add_argument("--skip-gpu", action="store_true", help="CPU part only, even where CUDA is present")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU part only")
    parser.add_argument(
        "--cases", type=parse_cases, default=None, help="GPU cases as side:n, e.g. 1024:10 (default: all four)"
    )
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="the arithmetic limit (H100 bf16: ~800)")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    tables: list[Table] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_cpu:
            table, report["png"] = png_part(args.quick)
            tables.append(table)
            table, report["response"] = response_part(args.quick)
            tables.append(table)
            server_tables, report["cpu_server"] = cpu_server_part(args.quick, work)
            tables += server_tables
            safety_tables, report["safety"] = safety_part(args.quick, work)
            tables += safety_tables
        if (torch.cuda.is_available() or args.smoke) and not args.skip_gpu:
            gpu_tables, report["gpu"] = gpu_part(args.quick, args.smoke, work, args.peak_tflops, args.cases)
            tables += gpu_tables
        else:
            report["gpu"] = None
    text = f"## vary bench, {report['date']}\n\nMachine: {report['machine']}\n\n" + markdown(tables)
    if report["gpu"] is None:
        text += "\nGPU part not run: no CUDA device here.\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "markdown": text}, indent=2))


if __name__ == "__main__":
    main()
