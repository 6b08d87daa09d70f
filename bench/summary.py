"""results.json as markdown: the table per model, the goals met or not, the notes and what was skipped.

`python -m bench.summary OUT_DIR/results.json` prints it again from the file (e.g. from a run cut off before
its own summary).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.record import Record

# The goals (issue 35): for the table's last section.
GOAL_FRACTION_OF_LIMIT = 0.50  # 1024 n=10, vary
GOAL_SPEEDUP = 1.25  # 1024 n=10, vary over tuned diffusers
GOAL_HTTP_OVERHEAD = 0.03
GOAL_P50_512_MS = 150.0


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "model", "case", "contender", "images/s", "p50 ms", "p95 ms", "of limit", "vs tuned", "HTTP overhead",
        "TFLOP/image", "images/batch", "errors",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        case = f"{r['side']} n={r['n']}" + (f" c={r['concurrency']}" if r.get("concurrency", 1) > 1 else "")
        cells = [
            r.get("model", ""), case, r["case"], _num(r["images_per_s"], 3), _num(r["p50_ms"], 0),
            _num(r["p95_ms"], 0), _pct(r["fraction_of_limit"]), _num(r["speedup_vs_tuned"]),
            _pct(r["overhead_fraction"]), _num(r.get("tflop_per_image"), 1), _num(r.get("mean_batch_images"), 1),
            str(len(r.get("errors") or [])),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def goals(rows: list[dict[str, Any]]) -> list[str]:
    """Each goal per model, from the rows that bear on it: met, missed, or not measured."""
    lines = []
    for model in dict.fromkeys(r.get("model") for r in rows):
        mine = [r for r in rows if r.get("model") == model]

        def pick(side: int, n: int, case: str, rows: list[dict[str, Any]] = mine) -> Any:
            key = (side, n, case, 1)
            return next((r for r in rows if (r["side"], r["n"], r["case"], r.get("concurrency", 1)) == key), None)

        big = pick(1024, 10, "vary")
        small = [r for r in (pick(512, 1, "vary"), pick(512, 1, "http-b64_json")) if r]
        http = [r for r in mine if r["case"].startswith("http") and r["overhead_fraction"] is not None]
        checks = [
            ("1024 n=10: at least 50% of the arithmetic limit", big and big["fraction_of_limit"],
             lambda v: v >= GOAL_FRACTION_OF_LIMIT, _pct),
            ("1024 n=10: at least 1.25x tuned diffusers", big and big["speedup_vs_tuned"],
             lambda v: v >= GOAL_SPEEDUP, lambda v: f"{v:.2f}x"),
            ("HTTP overhead at most 3% (worst case)", max((r["overhead_fraction"] for r in http), default=None),
             lambda v: v <= GOAL_HTTP_OVERHEAD, _pct),
            ("512 n=1 p50 at most 150 ms (vary; over HTTP)", max((r["p50_ms"] for r in small), default=None),
             lambda v: v <= GOAL_P50_512_MS, lambda v: f"{v:.0f} ms"),
        ]  # fmt: skip
        for goal, value, met, shown in checks:
            verdict = "not measured" if value is None else ("met" if met(value) else "missed")
            lines.append(f"- {model}: {goal}: {verdict}" + ("" if value is None else f" ({shown(value)})"))
    return lines


def markdown(record: Record | dict[str, Any]) -> str:
    data = record if isinstance(record, dict) else {**record.meta, "machine": record.machine, "rows": record.rows,
                                                     "notes": record.notes, "skipped": record.skipped}  # fmt: skip
    out = [f"## GPU bench, {data.get('date', '')}", "", f"Machine: {data['machine']}", ""]
    if data.get("smoke"):
        out += ["Smoke run: tiny twins on the CPU. The numbers mean nothing; every code path ran.", ""]
    out += table(data["rows"]) + [""]
    if data.get("kind") != "tune":
        out += ["Goals (issue 35):", ""] + goals(data["rows"]) + [""]
    else:
        out += ["Kept:", ""] + [f"- {model}: {placement}" for model, placement in data.get("kept", {}).items()] + [""]
    out += ["Notes:", ""] + [f"- {line}" for line in data.get("notes", [])]
    if data.get("skipped"):
        out += ["", "Skipped (the time ran short):", ""] + [f"- {s['stage']}: {s['why']}" for s in data["skipped"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
