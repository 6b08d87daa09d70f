"""One evaluation run: every input through every model at every strength, via VariationService.create.

Requests go one at a time, so each latency is one request's own (n images, no queueing behind
another request of the run); images per second is the images made over the time spent making them.
Each variation is scored as it arrives and only its embedding is kept; the images of the first
`sheet_inputs` inputs are written out for the contact sheet.
"""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vary.controls import RequestedControls
from vary.errors import VaryError
from vary.evaluation import metrics
from vary.evaluation.scorer import ClipScorer
from vary.imaging import InputImage
from vary.request import VariationRequest
from vary.service.variations import VariationService


@dataclass(frozen=True)
class Source:
    """One input: its file name, the square PNG the endpoint takes, its caption if known."""

    name: str
    png: bytes
    caption: str | None = None


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    strengths: tuple[float, ...]
    n: int
    size: int
    seed: int = 0  # input i is varied with seed + i by every model at every strength: paired comparisons
    sheet_inputs: int = 12  # inputs whose variations are written out for the contact sheet


@dataclass
class Cell:
    """What one model made at one strength, and its scores so far."""

    model: str
    strength: float
    fidelity: list[float] = field(default_factory=list)
    clip_t: list[float] = field(default_factory=list)
    diversity: list[float | None] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    images: int = 0
    failures: list[str] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # input name -> variation files, relative to out

    def summary(self, *, captions: bool) -> dict[str, float | int | None]:
        figures: dict[str, float | int | None] = {"fidelity_clip_i": metrics.mean(self.fidelity)}
        if captions:
            figures["clip_t"] = metrics.mean(self.clip_t)
        figures["diversity"] = metrics.mean(self.diversity)
        figures["images_per_s"] = metrics.images_per_second(self.images, sum(self.latencies))
        figures["p50_ms"] = metrics.p50_ms(self.latencies)
        figures["images"] = self.images
        figures["requests"] = len(self.latencies) + len(self.failures)
        figures["failed_requests"] = len(self.failures)
        return figures


async def evaluate(
    service: VariationService,
    sources: Sequence[Source],
    plan: Plan,
    scorer: ClipScorer,
    out: Path,
    *,
    progress: bool = True,
) -> list[Cell]:
    sources_embedded = scorer.embed_images([_image(source.png) for source in sources])
    captions = [source.caption for source in sources]
    caption_embeds = scorer.embed_texts([c for c in captions if c is not None]) if any(captions) else None
    caption_row = _caption_rows(captions)
    for i, source in enumerate(sources[: plan.sheet_inputs]):
        _write(out / input_file(i), source.png)
    cells = [Cell(model, strength) for model in plan.models for strength in plan.strengths]
    with tqdm(total=len(cells) * len(sources), unit="request", file=sys.stderr, disable=not progress) as bar:
        for cell in cells:
            bar.set_description(f"{cell.model} strength {cell.strength:g}")
            for i, source in enumerate(sources):
                pngs = await _vary(service, cell, source, plan, plan.seed + i)
                bar.update()
                if not pngs:
                    continue
                embeds = scorer.embed_images([_image(png) for png in pngs])
                cell.images += len(pngs)
                cell.fidelity += metrics.fidelity(embeds, sources_embedded[i])
                cell.diversity.append(metrics.diversity(embeds))
                row = caption_row[i]
                if caption_embeds is not None and row is not None:
                    cell.clip_t += metrics.clip_score(embeds, caption_embeds[row])
                if i < plan.sheet_inputs:
                    files = [variation_file(cell.model, cell.strength, i, k) for k in range(len(pngs))]
                    for file, png in zip(files, pngs, strict=True):
                        _write(out / file, png)
                    cell.files[source.name] = [file.as_posix() for file in files]
    return cells


async def _vary(service: VariationService, cell: Cell, source: Source, plan: Plan, seed: int) -> list[bytes]:
    """The request as the API would take it, timed; a refusal or failure is counted, and the run goes on."""
    request = VariationRequest(
        images=(InputImage(source.png),),
        n=plan.n,
        size=plan.size,
        response_format="b64_json",
        model=cell.model,
        # Strength 1 is every model's default; left out, so a model or provider without the control still runs.
        controls=RequestedControls(seed=seed, strength=cell.strength if cell.strength != 1 else None),
    )
    started = time.perf_counter()
    try:
        result = await service.create(request, base_url="http://vary-eval.invalid")
    except VaryError as exc:
        cell.failures.append(f"{source.name}: {type(exc).__name__}: {exc}")
        return []
    cell.latencies.append(time.perf_counter() - started)
    return list(result.pngs)


def _caption_rows(captions: Sequence[str | None]) -> list[int | None]:
    """Each input's row among the embedded captions (only the inputs that have one were embedded)."""
    rows: list[int | None] = []
    count = 0
    for caption in captions:
        rows.append(count if caption is not None else None)
        count += caption is not None
    return rows


def _image(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def input_file(index: int) -> Path:
    return Path("inputs") / f"{index:04d}.png"


def variation_file(model: str, strength: float, index: int, k: int) -> Path:
    return Path("variations") / slug(model) / f"strength-{strength:g}" / f"{index:04d}-{k}.png"


def slug(text: str) -> str:
    """A model name as one safe path segment."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "model"
