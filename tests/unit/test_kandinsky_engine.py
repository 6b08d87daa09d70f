"""What is Kandinsky's own: render sizes, options read from a model directory, compile, samplers and dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.test_engines import assert_same_images, pixels, red, run
from vary.engines.diffusion import Placement
from vary.engines.kandinsky import KandinskyOptions, KandinskyVariationEngine
from vary.service.catalogue import CatalogueError, model_for_spec


@pytest.fixture(scope="module")
def tiny() -> KandinskyVariationEngine:
    return KandinskyVariationEngine.tiny_random()  # type: ignore[return-value]


def test_render_sizes() -> None:
    real = KandinskyOptions()
    assert [real.render_side(s, 64) for s in (256, 512, 1024)] == [512, 512, 1024]
    assert KandinskyOptions(min_render_side=64, max_render_side=64).render_side(1024, 64) == 64
    assert KandinskyOptions(min_render_side=100, max_render_side=1000).render_side(256, 64) == 256
    assert KandinskyOptions(min_render_side=300, max_render_side=1000).render_side(256, 64) == 320


def test_unknown_model_spec(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="local model directory"):
        model_for_spec(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogueError, match="not a model directory"):
        model_for_spec(str(tmp_path / "empty"))


def test_a_model_directory_keeps_its_own_options_unless_overridden(
    tiny: KandinskyVariationEngine, tmp_path: Path
) -> None:
    tiny.save_pretrained(tmp_path / "m")
    assert model_for_spec(str(tmp_path / "m")).build().options.steps == 2
    overridden = model_for_spec(str(tmp_path / "m")).build(overrides={"steps": 3, "guidance_scale": 1.5})
    assert (overridden.options.steps, overridden.options.guidance_scale) == (3, 1.5)


def test_compiled_unet_gives_the_eager_images(tiny: KandinskyVariationEngine) -> None:
    """VARY_COMPILE's path: torch.compile and warm-up, then the same images as eager (about 50 s on a CPU)."""
    compiled = KandinskyVariationEngine.tiny_random(placement=Placement(compile=True))
    compiled.warmup()  # compiles for n=1 at the render size; the call below reuses that graph
    assert_same_images(run(compiled, 64, (red(), 1, 3))[0], run(tiny, 64, (red(), 1, 3))[0])


def test_sampler_and_dtype_choices(tiny: KandinskyVariationEngine) -> None:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    by_dpm = run(tiny, 64, (red(), 1, 3))[0]
    assert isinstance(tiny.pipeline.scheduler, DPMSolverMultistepScheduler)
    ddpm = KandinskyVariationEngine.tiny_random(sampler="ddpm")
    by_ddpm = run(ddpm, 64, (red(), 1, 3))[0]
    assert isinstance(ddpm.pipeline.scheduler, DDPMScheduler)  # type: ignore[attr-defined]
    assert np.abs(pixels(by_ddpm[0]) - pixels(by_dpm[0])).mean() > 1
    with pytest.raises(ValueError, match="unknown sampler"):
        KandinskyOptions(sampler="euler")

    bf16 = KandinskyVariationEngine.tiny_random(placement=Placement(dtype="bfloat16"))
    frames = run(bf16, 64, (red(), 2, 3))[0]
    assert bf16.pipeline.unet.dtype == torch.bfloat16 and bf16.image_encoder.dtype == torch.bfloat16  # type: ignore[attr-defined]
    assert [f.shape for f in frames] == [(64, 64, 3)] * 2 and frames[0].dtype == np.uint8
