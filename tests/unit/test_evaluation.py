"""`vary eval`'s pieces without the models: the figures, captions, the paper's table, the CLIP scorer by path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vary.evaluation import metrics, report
from vary.evaluation.captions import CaptionsError, read_captions
from vary.evaluation.protocol import PAPER_ROWS, Row, table
from vary.evaluation.run import Cell, slug, variation_file
from vary.evaluation.scorer import ClipScorer


def unit(*rows: list[float]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_fidelity_is_the_cosine_to_the_input() -> None:
    source = unit([1.0, 0.0])[0]
    variations = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    assert metrics.fidelity(variations, source) == pytest.approx([1.0, 0.0, 2**-0.5])


def test_clip_score_is_hessels_rescaled_and_clipped_cosine() -> None:
    caption = unit([1.0, 0.0])[0]
    assert metrics.clip_score(unit([1.0, 1.0], [-1.0, 0.0]), caption) == pytest.approx([2.5 * 2**-0.5, 0.0])


def test_diversity_is_the_mean_pairwise_distance() -> None:
    same = unit([1.0, 0.0], [1.0, 0.0], [1.0, 0.0])
    assert metrics.diversity(same) == pytest.approx(0.0)
    # Pairs: (x, y) 1, (x, -x) 2, (y, -x) 1.
    assert metrics.diversity(unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])) == pytest.approx(4 / 3)
    assert metrics.diversity(unit([1.0, 0.0])) is None


def test_speed_and_means() -> None:
    assert metrics.p50_ms([0.1, 0.3, 0.2]) == pytest.approx(200)
    assert metrics.p50_ms([]) is None
    assert metrics.images_per_second(8, 2.0) == 4 and metrics.images_per_second(0, 1.0) is None
    assert metrics.mean([1.0, None, 3.0]) == 2 and metrics.mean([None]) is None


def test_captions_from_coco_json_and_tsv(tmp_path: Path) -> None:
    coco = tmp_path / "captions_val2017.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "000000000007.jpg"}],
                "annotations": [
                    {"id": 3, "image_id": 7, "caption": "A  dog\non a sofa. "},
                    {"id": 1, "image_id": 7, "caption": "A dog sleeping."},
                ],
            }
        )
    )
    assert read_captions(coco) == {"000000000007.jpg": "A dog sleeping."}
    mapping = tmp_path / "captions.json"
    mapping.write_text(json.dumps({"a.png": "a cat"}))
    assert read_captions(mapping) == {"a.png": "a cat"}
    lines = tmp_path / "captions.tsv"
    lines.write_text("a.png\ta cat\n\nb.png\ta dog\n")
    assert read_captions(lines) == {"a.png": "a cat", "b.png": "a dog"}
    lines.write_text("a.png a cat\n")
    with pytest.raises(CaptionsError, match=":1: expected"):
        read_captions(lines)
    mapping.write_text("[1, 2]")
    with pytest.raises(CaptionsError, match="neither a COCO"):
        read_captions(mapping)


def test_the_paper_table_lists_its_rows_beside_ours() -> None:
    text = table([Row("kandinsky-2.2", 0.6, None, "vary (5000 images x 4)")])
    lines = text.splitlines()
    assert len(lines) == 2 + len(PAPER_ROWS) + 1
    assert "Open unCLIP" in lines[2] and "0.608" in lines[2] and "0.858" in lines[2]
    assert lines[-1].split()[:3] == ["kandinsky-2.2", "0.600", "-"]


def test_file_names_are_safe_for_any_model_name() -> None:
    assert slug("team/model:v2") == "team-model-v2"
    assert variation_file("a/b", 0.5, 3, 1).as_posix() == "variations/a-b/strength-0.5/0003-1.png"


def test_the_tiny_scorer_saves_and_loads_by_path(tmp_path: Path) -> None:
    scorer = ClipScorer.load("tiny-random", device="cpu")
    config = scorer.model.config.vision_config
    assert (config.image_size, config.patch_size) == (224, 14)  # ViT-L/14's input, at toy width
    images = [Image.new("RGB", (300, 200), (200, 20, 20)), Image.new("RGB", (50, 50), (20, 20, 200))]
    embeds = scorer.embed_images(images)
    assert embeds.shape == (2, 32) and torch.allclose(embeds.norm(dim=-1), torch.ones(2))
    scorer.save_pretrained(tmp_path / "clip")
    loaded = ClipScorer.load(str(tmp_path / "clip"), device="cpu")
    assert torch.allclose(loaded.embed_images(images), embeds, atol=1e-5)
    assert torch.allclose(loaded.embed_texts(["a red square"]), scorer.embed_texts(["a red square"]), atol=1e-5)


def _cells(diversity: tuple[float, float], step: float) -> list[Cell]:
    """Figures like the tiny models': diversity in the thousandths or below, fidelity in a narrow band."""
    cells = []
    for model, base in zip(("tiny-random", "tiny-random-sd-image-variations"), diversity, strict=True):
        for strength, shift in ((1.0, 0.0), (0.5, step)):
            cell = Cell(model, strength)
            cell.fidelity = [0.9412 + shift * 10, 0.9412]
            cell.diversity = [base + shift, base + 2 * shift]
            cells.append(cell)
    return cells


def _overlapping(boxes: list[Any]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


@pytest.mark.parametrize("plot", [report.fidelity_vs_diversity, report.fidelity_by_strength])
@pytest.mark.parametrize("cells", [_cells((0.00112, 0.00043), 3e-5), _cells((0.0001234, 0.0001231), 3e-7)])
def test_plot_labels_never_overlap_and_stay_inside(plot: Callable[[list[Cell]], Any], cells: list[Cell]) -> None:
    import matplotlib.pyplot as plt

    figure = plot(cells)
    try:
        figure.canvas.draw()  # at the size it is saved at: an SVG scales as a whole on the page
        renderer = figure.canvas.get_renderer()
        (axes,) = figure.axes
        for ticks in (axes.get_xticklabels(), axes.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in ticks if t.get_text() and t.get_visible()]
            # At least a few pixels apart: numbers that touch read as one.
            assert len(boxes) >= 2 and _overlapping([box.padded(4) for box in boxes]) == []
        # No offset ("1e-6+9.412e-1") to add in the head: every label is the number itself.
        assert axes.xaxis.get_offset_text().get_text() == "" and axes.yaxis.get_offset_text().get_text() == ""
        inside = figure.bbox
        texts = [*axes.texts, axes.xaxis.label, axes.yaxis.label, axes.title]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, text
        # The strength labels sit inside the plotting area, not over its frame or beyond it.
        frame = axes.get_window_extent(renderer)
        for text in axes.texts:
            box = text.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
    finally:
        plt.close(figure)
