"""Usage summaries by key, user and model: what `vary usage` prints and GET /v1/admin/usage returns."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

from vary.echo import clipped
from vary.state.schema import UsageRow

FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class UsageSummary:
    key_id: str | None
    user: str | None
    model: str | None
    requests: int
    images: int  # delivered: the n of successful requests
    failures: int  # every request that did not end in 200, including 429s and clients that left (499)
    latency_p50_ms: float
    latency_p95_ms: float
    latency_mean_ms: float


def parse_since(text: str) -> float:
    """An ISO date or date-time; without a zone it is UTC. Raises ValueError in plain words."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{clipped(text)!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def summarise(rows: Iterable[UsageRow]) -> list[UsageSummary]:
    groups: dict[tuple[str | None, str | None, str | None], list[UsageRow]] = {}
    for row in rows:
        groups.setdefault((row.key_id, row.user, row.model), []).append(row)
    summaries = []
    for (key_id, user, model), members in groups.items():
        latencies = sorted(row.latency_ms for row in members)
        summaries.append(
            UsageSummary(
                key_id=key_id,
                user=user,
                model=model,
                requests=len(members),
                images=sum(row.n or 0 for row in members if row.status == 200),
                failures=sum(1 for row in members if row.status != 200),
                latency_p50_ms=_nearest_rank(latencies, 0.50),
                latency_p95_ms=_nearest_rank(latencies, 0.95),
                latency_mean_ms=round(sum(latencies) / len(latencies), 1),
            )
        )
    return sorted(summaries, key=lambda s: (s.key_id or "", s.user or "", s.model or ""))


def _nearest_rank(ordered: list[float], quantile: float) -> float:
    return round(ordered[max(0, math.ceil(quantile * len(ordered)) - 1)], 1)


def render(summaries: list[UsageSummary], output_format: str) -> str:
    if output_format == "json":
        return json.dumps([asdict(s) for s in summaries], indent=2)
    names = [f.name for f in fields(UsageSummary)]
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_cell(getattr(s, name)) for name in names] for s in summaries])
        return buffer.getvalue().rstrip("\n")
    rows = [["key", "user", "model", "requests", "images", "failures", "p50 ms", "p95 ms", "mean ms"]]
    rows += [[_cell(getattr(s, name)) for name in names] for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
