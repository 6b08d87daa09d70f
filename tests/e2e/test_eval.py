"""`vary eval` end to end on the tiny models: the real command on a handful of images, its report folder, and
report.html opened from disk in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vary.testing import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MODELS = ("tiny-random", "tiny-random-sd-image-variations", "tiny-random-flux-redux")
FIGURES = {"fidelity_clip_i", "clip_t", "diversity", "images_per_s", "p50_ms"}


def pictures(folder: Path) -> None:
    """Three inputs of different shapes and formats, smooth with a little noise; one has no caption."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name, (width, height) in {"a.png": (64, 64), "b.jpg": (80, 48), "c.webp": (40, 72)}.items():
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, rng.uniform() * np.ones_like(x)], axis=-1)
        noisy = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
        Image.fromarray((noisy * 255).astype(np.uint8)).save(folder / name)


def coco_captions(path: Path) -> None:
    """COCO's annotation layout: five captions an image in the real file; the first by id is used."""
    document = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "a smooth gradient"},
            {"id": 10, "image_id": 1, "caption": "a soft gradient of colour"},
            {"id": 12, "image_id": 2, "caption": "a wide picture"},
        ],
    }
    path.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    root = tmp_path_factory.mktemp("eval")
    pictures(root / "images")
    coco_captions(root / "captions.json")
    command = [sys.executable, "-m", "vary", "eval", str(root / "images")]
    for model in MODELS:
        command += ["--model", model]
    command += ["--strength", "1,0.5", "-n", "2", "--size", "256x256", "--captions", str(root / "captions.json")]
    command += ["--scorer", "tiny-random", "--out", str(root / "report"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    yield root / "report", done


def test_report_json_has_every_figure_per_model_and_strength(
    report: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, done = report
    document = json.loads((folder / "report.json").read_text())
    assert set(document["models"]) == set(MODELS)
    assert document["inputs"] == 3 and document["n"] == 2 and document["size"] == "256x256"
    for model in MODELS:
        assert set(document["models"][model]) == {"1", "0.5"}
        for figures in document["models"][model].values():
            assert FIGURES <= set(figures)
            assert figures["images"] == 6 and figures["failed_requests"] == 0
            assert -1 <= figures["fidelity_clip_i"] <= 1 and 0 <= figures["diversity"] <= 2
            assert 0 <= figures["clip_t"] <= 2.5 and figures["images_per_s"] > 0 and figures["p50_ms"] > 0
    # Every variation was made at the asked size, through the service's PNG encoding.
    variations = sorted((folder / "variations").rglob("*.png"))
    assert len(variations) == len(MODELS) * 2 * 3 * 2
    assert all(Image.open(path).size == (256, 256) for path in variations)
    assert "tiny-random strength 0.5: fidelity_clip_i" in done.stdout
    assert "torchvision" not in done.stderr  # transformers' notice about processors vary picks on purpose


def test_the_same_seed_gives_the_same_variations_across_strength_runs(
    report: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Input i is varied with seed + i everywhere: one model's two images of an input differ from each other."""
    folder, _ = report
    first, second = (np.asarray(Image.open(folder / f"variations/tiny-random/strength-1/0000-{k}.png")) for k in (0, 1))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 1


def test_bad_arguments_are_refused_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    command = [sys.executable, "-m", "vary", "eval", str(tmp_path / "empty"), "--model", "tiny-random"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no images in" in done.stderr
    pictures(tmp_path / "images")
    command = [sys.executable, "-m", "vary", "eval", str(tmp_path / "images"), "--model", "no-such-model"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown model 'no-such-model'" in done.stderr
    command[-1:] = ["tiny-random", "--strength", "1,2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--strength" in done.stderr


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("VARY_REQUIRE_BROWSER"),
    reason="no system Chromium (apt install chromium); .ci/run installs it",
)
def test_report_html_opens_from_disk_with_every_image_and_no_console_error(
    report: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "VARY_REQUIRE_BROWSER is set but no chromium is installed"
    folder, _ = report
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
            page.goto((folder / "report.html").resolve().as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "images => images.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth}))"
            )
            # Two plots, three inputs, and each input's 2 variations per model and strength.
            assert len(images) == 2 + 3 + 3 * len(MODELS) * 2 * 2
            assert [image for image in images if image["width"] == 0] == []
            assert any(image["src"].endswith(".svg") for image in images)
            assert page.locator("table.figures tbody tr").count() == len(MODELS) * 2
            assert "a soft gradient of colour" in page.content()  # COCO: the first caption by annotation id
            assert errors == []
        finally:
            browser.close()


def test_the_ip_adapter_protocol_prints_the_papers_table_beside_ours(tmp_path: Path) -> None:
    """The paper's settings, but for a toy scorer, one variation and small images (each one warned about)."""
    pictures(tmp_path / "images")
    coco_captions(tmp_path / "captions.json")
    command = [sys.executable, "-m", "vary", "eval", str(tmp_path / "images"), "--protocol", "ip-adapter"]
    command += ["--model", "tiny-random", "--captions", str(tmp_path / "captions.json"), "--scorer", "tiny-random"]
    command += ["-n", "1", "--size", "256x256", "--out", str(tmp_path / "report"), "--no-progress", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "n, size, scorer differ from the ip-adapter protocol's" in done.stderr
    assert "the protocol has 5000 COCO val2017 images; this folder gives 3" in done.stderr
    table = done.stdout[done.stdout.index("method") :].splitlines()
    assert [line.split()[0] for line in table[2:]] == [
        "Open",
        "Kandinsky",
        "Versatile",
        "IP-Adapter",
        "SD",
        "SD",
        "tiny-random",
    ]
    assert table[-1].endswith("vary (3 images x 1)")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["protocol"] == "ip-adapter"
    without_captions = [part for part in command if part != str(tmp_path / "captions.json") and part != "--captions"]
    done = subprocess.run(without_captions, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs --captions" in done.stderr


@pytest.mark.parametrize("offline", [False, True])
def test_the_default_scorer_without_the_hub_is_one_line_naming_the_ways_out(tmp_path: Path, offline: bool) -> None:
    """No scorer in the cache and a Hub that refuses connections (or HF_HUB_OFFLINE): one line, no retries."""
    pictures(tmp_path / "images")
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "vary", "eval", str(tmp_path / "images"), "--model", "tiny-random"]
    command += ["--out", str(tmp_path / "report"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "vary eval: loading tiny-random and the scorer openai/clip-vit-large-patch14", done.stderr
    (line,) = lines[1:]
    assert line.startswith("vary eval: the scorer openai/clip-vit-large-patch14 is not in the Hugging Face cache")
    assert ("HF_HUB_OFFLINE is set" if offline else f"the Hub at {env['HF_ENDPOINT']} cannot be reached") in line
    for way_out in ("hf download openai/clip-vit-large-patch14", "--scorer DIR", "--scorer tiny-random"):
        assert way_out in line
