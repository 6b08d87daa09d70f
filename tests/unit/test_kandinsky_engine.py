"""The real Kandinsky 2.2 engine code on the tiny-random model, in memory and loaded back by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vary.engines.base import Batch, VariationItem
from vary.engines.kandinsky import KandinskyVariationEngine, Placement, RenderOptions
from vary.engines.registry import UnknownModelSpec, load_engine


@pytest.fixture(scope="module")
def tiny() -> KandinskyVariationEngine:
    return KandinskyVariationEngine.tiny_random()


def pixels(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.int16)


def red(side: int = 48) -> Image.Image:
    return Image.new("RGB", (side, side), (220, 20, 20))


def assert_same_images(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    """Equal but for float rounding, which differs across batch shapes and tensor layouts and which the
    random tiny weights amplify at a few pixels; two different images differ by ~120 levels on average."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        diff = np.abs(pixels(x) - pixels(y))
        assert (diff == 0).mean() > 0.95 and diff.mean() < 0.5


def item(engine: KandinskyVariationEngine, image: Image.Image, n: int, seed: int) -> VariationItem:
    return VariationItem(engine.prepare(image), n, seed)


def run(engine: KandinskyVariationEngine, size: int, *items: VariationItem) -> list[list[np.ndarray]]:
    """Generate, then finish to the exact size, as the serving path does."""
    return [engine.finish(frames, size) for frames in engine.generate(Batch(items=items, size=size))]


def test_counts_and_exact_sizes(tiny: KandinskyVariationEngine) -> None:
    out = run(tiny, 512, item(tiny, red(), 2, 1), item(tiny, red(), 1, 2))
    assert [len(images) for images in out] == [2, 1]
    assert all(img.shape == (512, 512, 3) and img.dtype == np.uint8 for images in out for img in images)


def test_batched_equals_single(tiny: KandinskyVariationEngine) -> None:
    blue = Image.new("RGB", (48, 48), (20, 20, 220))
    alone = run(tiny, 64, item(tiny, blue, 2, 7))[0]
    batched = run(tiny, 64, item(tiny, red(), 3, 1), item(tiny, blue, 2, 7))[1]
    assert_same_images(alone, batched)


def test_seed_determines_images_and_images_differ(tiny: KandinskyVariationEngine) -> None:
    first = run(tiny, 64, item(tiny, red(), 2, 5))[0]
    again = run(tiny, 64, item(tiny, red(), 2, 5))[0]
    other = run(tiny, 64, item(tiny, red(), 1, 6))[0]
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))


def test_input_image_conditions_the_output(tiny: KandinskyVariationEngine) -> None:
    a = run(tiny, 64, item(tiny, red(), 1, 3))[0][0]
    b = run(tiny, 64, item(tiny, Image.new("RGB", (48, 48), (0, 255, 0)), 1, 3))[0][0]
    assert not np.array_equal(pixels(a), pixels(b))


def test_save_and_load_by_path_gives_the_same_images(tiny: KandinskyVariationEngine, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "my-kandinsky")
    assert (tmp_path / "my-kandinsky" / "decoder" / "model_index.json").is_file()
    assert (tmp_path / "my-kandinsky" / "prior" / "image_encoder" / "config.json").is_file()
    loaded = load_engine(str(tmp_path / "my-kandinsky"))
    assert loaded.info.id == "my-kandinsky"
    # Compared at the render size: upscaling would smear each rounding difference over many pixels.
    assert_same_images(run(tiny, 64, item(tiny, red(), 2, 11))[0], run(loaded, 64, item(tiny, red(), 2, 11))[0])


def test_render_sizes() -> None:
    real = RenderOptions()
    assert [real.render_side(s) for s in (256, 512, 1024)] == [512, 512, 1024]
    assert RenderOptions(min_render_side=64, max_render_side=64).render_side(1024) == 64
    assert RenderOptions(min_render_side=100, max_render_side=1000).render_side(256) == 256
    assert RenderOptions(min_render_side=300, max_render_side=1000).render_side(256) == 320


def test_unknown_model_spec(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelSpec, match="local model directory"):
        load_engine(str(tmp_path / "missing"))


def test_a_model_directory_keeps_its_own_options_unless_overridden(
    tiny: KandinskyVariationEngine, tmp_path: Path
) -> None:
    tiny.save_pretrained(tmp_path / "m")
    assert load_engine(str(tmp_path / "m")).options.num_inference_steps == 2  # type: ignore[attr-defined]
    overridden = load_engine(str(tmp_path / "m"), num_inference_steps=3, guidance_scale=1.5)
    assert (overridden.options.num_inference_steps, overridden.options.guidance_scale) == (3, 1.5)  # type: ignore[attr-defined]


def test_compiled_unet_gives_the_eager_images(tiny: KandinskyVariationEngine) -> None:
    """VARY_COMPILE's path: torch.compile and warm-up, then the same images as eager (about 50 s on a CPU)."""
    compiled = KandinskyVariationEngine.tiny_random(placement=Placement(compile=True))
    compiled.warmup()  # compiles for n=1 at the render size; the call below reuses that graph
    assert_same_images(run(compiled, 64, item(tiny, red(), 1, 3))[0], run(tiny, 64, item(tiny, red(), 1, 3))[0])


def test_sampler_and_dtype_choices(tiny: KandinskyVariationEngine) -> None:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    assert isinstance(tiny.pipeline.scheduler, DPMSolverMultistepScheduler)
    ddpm = KandinskyVariationEngine.tiny_random(sampler="ddpm")
    assert isinstance(ddpm.pipeline.scheduler, DDPMScheduler)
    by_ddpm = run(ddpm, 64, item(tiny, red(), 1, 3))[0]
    assert np.abs(pixels(by_ddpm[0]) - pixels(run(tiny, 64, item(tiny, red(), 1, 3))[0][0])).mean() > 1
    with pytest.raises(ValueError, match="unknown sampler"):
        RenderOptions(sampler="euler")

    bf16 = KandinskyVariationEngine.tiny_random(placement=Placement(dtype="bfloat16"))
    assert bf16.pipeline.unet.dtype == torch.bfloat16 and bf16.image_encoder.dtype == torch.bfloat16
    frames = run(bf16, 64, item(bf16, red(), 2, 3))[0]
    assert [f.shape for f in frames] == [(64, 64, 3)] * 2 and frames[0].dtype == np.uint8
