"""What a GPU run keeps as it goes: the clock it must end by, and results.json rewritten after every stage.

A lease can end a command at any moment, so nothing waits for the end: each measured row, each skipped stage
and each note lands in OUT_DIR/results.json (written whole to a temporary name, then renamed) as soon as it
exists. The log is the run's own stdout, which bench/gpu_run.sh copies into OUT_DIR/log.txt line by line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# results.json's columns, in this order; a row may carry more (model, concurrency, the server's timings).
COLUMNS = (
    "side", "case", "n", "images_per_s", "p50_ms", "p95_ms",
    "fraction_of_limit", "speedup_vs_tuned", "overhead_fraction", "machine",
)  # fmt: skip


def quiet_loading() -> None:
    """No loading bars in the log: diffusers' and transformers' own tqdm bars."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


@dataclass
class Clock:
    """The run's deadline, and what is left of it. `started` is when the command began (the shell's clock),
    so the wheels' install and Python's imports count too."""

    started: float
    seconds: float

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        return self.deadline - time.time()

    def elapsed(self) -> float:
        return time.time() - self.started

    def fits(self, seconds: float, reserve: float = 0.0) -> bool:
        return seconds <= self.left() - reserve


@dataclass
class Record:
    out: Path
    machine: str
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.write()

    def row(self, **values: Any) -> dict[str, Any]:
        row = {column: values.pop(column, None) for column in COLUMNS}
        row["machine"] = self.machine
        row.update(values)
        self.rows.append(row)
        self.write()
        return row

    def skip(self, stage: str, why: str) -> None:
        say(f"skipped {stage}: {why}")
        self.skipped.append({"stage": stage, "why": why})
        self.write()

    def note(self, line: str) -> None:
        say(line)
        self.notes.append(line)
        self.write()

    def stage(self, name: str, seconds: float) -> None:
        self.stages.append({"stage": name, "seconds": round(seconds, 2)})
        self.write()

    def set(self, **values: Any) -> None:
        self.meta.update(values)
        self.write()

    def write(self) -> None:
        body = {
            **self.meta,
            "machine": self.machine,
            "columns": list(COLUMNS),
            "rows": self.rows,
            "skipped": self.skipped,
            "notes": self.notes,
            "stages": self.stages,
        }
        temporary = self.out / "results.json.part"
        temporary.write_text(json.dumps(body, indent=2, default=str))
        os.replace(temporary, self.out / "results.json")
