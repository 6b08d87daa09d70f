"""The report folder: report.json (the figures), plots (matplotlib, SVG) and report.html, a page that opens
from disk with no server: images and plots are relative files beside it, styles inline, no script."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vary.evaluation.metrics import mean
from vary.evaluation.run import Cell, Plan, Source, input_file

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
FIDELITY_PLOT = Path("plots") / "fidelity-by-strength.svg"
TRADE_OFF_PLOT = Path("plots") / "fidelity-vs-diversity.svg"


@dataclass(frozen=True)
class About:
    """What the run was, for the reader of the report."""

    images_dir: str
    scorer: str
    protocol: str | None = None


def figures(cells: Sequence[Cell], *, captions: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> strength (as written: "1", "0.5") -> its figures."""
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        by_model.setdefault(cell.model, {})[f"{cell.strength:g}"] = cell.summary(captions=captions)
    return by_model


def write_report(out: Path, cells: Sequence[Cell], sources: Sequence[Source], plan: Plan, about: About) -> Path:
    captions = any(source.caption is not None for source in sources)
    document = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images_dir": about.images_dir,
        "inputs": len(sources),
        "n": plan.n,
        "size": f"{plan.size}x{plan.size}",
        "strengths": list(plan.strengths),
        "scorer": about.scorer,
        "protocol": about.protocol,
        "captions": captions,
        "models": figures(cells, captions=captions),
        "failures": {f"{c.model} strength {c.strength:g}": c.failures for c in cells if c.failures},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(document, indent=2) + "\n")
    _plots(out, cells)
    (out / REPORT_HTML).write_text(_page(document, cells, sources, plan), encoding="utf-8")
    return out / REPORT_HTML


# --- plots ----------------------------------------------------------------------------------


def _plots(out: Path, cells: Sequence[Cell]) -> None:
    (out / "plots").mkdir(parents=True, exist_ok=True)
    _save(fidelity_by_strength(cells), out / FIDELITY_PLOT)
    _save(fidelity_vs_diversity(cells), out / TRADE_OFF_PLOT)


def _points(cells: Sequence[Cell]) -> dict[str, list[tuple[float, float | None, float | None]]]:
    """(strength, fidelity, diversity) per model, in the cells' order."""
    models = list(dict.fromkeys(cell.model for cell in cells))
    return {
        model: [(c.strength, mean(c.fidelity), mean(c.diversity)) for c in cells if c.model == model]
        for model in models
    }


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def fidelity_by_strength(cells: Sequence[Cell]) -> Any:
    figure, axes = _figure()
    for model, points in _points(cells).items():
        line = sorted((strength, fidelity) for strength, fidelity, _ in points if fidelity is not None)
        if line:
            axes.plot([x for x, _ in line], [y for _, y in line], marker="o", label=model)
    axes.set_xlabel("strength (1 = furthest from the input)")
    axes.set_ylabel("fidelity, CLIP-I")
    axes.set_title("Fidelity against strength")
    _finish(figure, axes)
    return figure


def fidelity_vs_diversity(cells: Sequence[Cell]) -> Any:
    figure, axes = _figure()
    for model, points in _points(cells).items():
        dots = [(d, f, s) for s, f, d in points if f is not None and d is not None]
        if dots:
            axes.scatter([d for d, _, _ in dots], [f for _, f, _ in dots], label=model)
            for x, y, strength in dots:
                axes.annotate(f"{strength:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("diversity, mean pairwise 1 - cosine")
    axes.set_ylabel("fidelity, CLIP-I")
    axes.set_title("Fidelity against diversity (labels: strength)")
    _finish(figure, axes)
    return figure


def _finish(figure: Any, axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    # Close figures (the tiny models' diversity differs in the sixth decimal) got a tick every few pixels,
    # their labels run together, and an offset ("1e-6+9.412e-1") above the axis: a few plain numbers instead.
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
        axis.set_major_formatter(ScalarFormatter(useOffset=False))
    axes.margins(0.15)  # room for the strength labels beside the outermost points
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    figure.tight_layout()


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.savefig(path, format="svg")
    plt.close(figure)


# --- the page ---------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table.figures { border-collapse: collapse; } table.figures th, table.figures td { padding: .3rem .7rem;
  border-bottom: 1px solid #ddd; text-align: right; } table.figures th:first-child, table.figures td:first-child
  { text-align: left; }
.plots img { max-width: 48%; min-width: 320px; }
.input { display: flex; gap: 1rem; align-items: flex-start; border-top: 1px solid #ddd; padding: 1rem 0; }
.input figure { margin: 0; } .input figcaption { font-size: 12px; color: #555; max-width: 160px; }
.rows { display: grid; gap: .5rem; } .row { display: flex; gap: .3rem; align-items: center; }
.row .label { width: 11rem; font-size: 12px; color: #333; }
img.thumb { width: 128px; height: 128px; object-fit: cover; border-radius: 4px; }
.note { color: #555; }
"""


def _page(document: dict[str, Any], cells: Sequence[Cell], sources: Sequence[Source], plan: Plan) -> str:
    e = html.escape
    captions = bool(document["captions"])
    columns = ["fidelity_clip_i", *(["clip_t"] if captions else []), "diversity", "images_per_s", "p50_ms"]
    head = "".join(f"<th>{e(name)}</th>" for name in ["model", "strength", *columns, "images", "failed"])
    rows = []
    for model, by_strength in document["models"].items():
        for strength, values in by_strength.items():
            cells_html = "".join(f"<td>{_number(values.get(name))}</td>" for name in columns)
            rows.append(
                f"<tr><td>{e(model)}</td><td>{e(strength)}</td>{cells_html}"
                f"<td>{values['images']}</td><td>{values['failed_requests']}</td></tr>"
            )
    sheet = [_input_block(i, source, cells) for i, source in enumerate(sources[: plan.sheet_inputs])]
    shown = min(len(sources), plan.sheet_inputs)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vary eval: {e(", ".join(document["models"]))}</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<h1>vary eval</h1>
<p class="note">{document["inputs"]} inputs from <code>{e(str(document["images_dir"]))}</code>, {plan.n} variations
each at {e(document["size"])}, scored with <code>{e(str(document["scorer"]))}</code>; made {e(document["created"])}.
Every image came through vary's variation service, the same road as the API.</p>
<h2>Figures</h2>
<table class="figures"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<p class="note">fidelity_clip_i: mean CLIP image cosine of each variation to its input. clip_t: CLIPScore
(2.5 &times; cosine) against the input's caption. diversity: mean pairwise 1 &minus; cosine among an input's
variations. images_per_s and p50_ms: measured while generating, one request at a time.</p>
<h2>Plots</h2>
<div class="plots"><img src="{FIDELITY_PLOT.as_posix()}" alt="fidelity against strength per model">
<img src="{TRADE_OFF_PLOT.as_posix()}" alt="fidelity against diversity"></div>
<h2>Contact sheet</h2>
<p class="note">The first {shown} of {len(sources)} inputs, each beside its variations per model and strength.</p>
{"".join(sheet)}
</body>
</html>
"""


def _input_block(index: int, source: Source, cells: Sequence[Cell]) -> str:
    e = html.escape
    caption = f"<br>{e(source.caption)}" if source.caption else ""
    rows = []
    for cell in cells:
        files = cell.files.get(source.name)
        label = f"{e(cell.model)}<br>strength {cell.strength:g}"
        if files:
            images = "".join(
                f'<img class="thumb" src="{e(file)}" alt="{e(cell.model)} variation {k + 1}">'
                for k, file in enumerate(files)
            )
        else:
            images = '<span class="note">failed</span>'
        rows.append(f'<div class="row"><div class="label">{label}</div>{images}</div>')
    return (
        f'<section class="input"><figure><img class="thumb" src="{input_file(index).as_posix()}" '
        f'alt="input {e(source.name)}"><figcaption>{e(source.name)}{caption}</figcaption></figure>'
        f'<div class="rows">{"".join(rows)}</div></section>\n'
    )


def _number(value: object) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return html.escape(str(value))
