"""The IP-Adapter paper's protocol (Ye et al. 2023, arXiv 2308.06721, Table 1) and its published rows.

COCO2017 val, 5,000 images, 4 variations each, scored with CLIP ViT-L/14: CLIP-I is the image
similarity to the input, CLIP-T the CLIPScore against the input's caption.
"""

from __future__ import annotations

from dataclasses import dataclass

from vary.evaluation.scorer import DEFAULT_SCORER

NAME = "ip-adapter"
IMAGES = 5000
N = 4
STRENGTH = 1.0
SIZE = 512
SCORER = DEFAULT_SCORER

# (method, CLIP-T, CLIP-I), as printed in Table 1.
PAPER_ROWS: tuple[tuple[str, float, float], ...] = (
    ("Open unCLIP", 0.608, 0.858),
    ("Kandinsky 2.1", 0.599, 0.855),
    ("Versatile Diffusion", 0.587, 0.830),
    ("IP-Adapter (SD 1.5)", 0.588, 0.828),
    ("SD unCLIP", 0.584, 0.810),
    ("SD Image Variations", 0.548, 0.760),
)


@dataclass(frozen=True)
class Row:
    method: str
    clip_t: float | None
    clip_i: float | None
    source: str  # "paper" or "vary (N images)"


def table(ours: list[Row]) -> str:
    """The paper's rows and ours, one table, as plain text for a terminal."""
    rows = [Row(method, t, i, "paper") for method, t, i in PAPER_ROWS] + ours
    width = max(len(row.method) for row in rows)
    lines = [f"{'method':<{width}}  {'CLIP-T':>6}  {'CLIP-I':>6}  source", "-" * (width + 30)]
    for row in rows:
        lines.append(f"{row.method:<{width}}  {_cell(row.clip_t)}  {_cell(row.clip_i)}  {row.source}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{value:6.3f}" if value is not None else f"{'-':>6}"
