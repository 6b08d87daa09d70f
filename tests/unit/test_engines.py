"""Every engine's real code on its tiny-random twin: batching, seeds, strength, controls, save and load by path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vary.engines.base import Batch, Controls, RequestedControls, VariationItem
from vary.engines.diffusion import DiffusionEngine
from vary.engines.registry import engine_types
from vary.errors import ControlInvalid
from vary.service.catalogue import model_for_spec

DEFAULT = RequestedControls()


@pytest.fixture(scope="module", params=sorted(engine_types()))
def engine(request: pytest.FixtureRequest) -> DiffusionEngine:
    return engine_types()[request.param].tiny_random()


def pixels(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.int16)


def red(side: int = 48) -> Image.Image:
    return Image.new("RGB", (side, side), (220, 20, 20))


def blue(side: int = 48) -> Image.Image:
    return Image.new("RGB", (side, side), (20, 20, 220))


def assert_same_images(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    """Equal but for float rounding, which differs across batch shapes and tensor layouts and which the random
    tiny weights amplify (SDXL's most: up to 6 levels, 0.8 on average); two different images differ by 30-120
    levels on average, and a mixed-up generator or embedding would show as that."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert mean_difference(x, y) < 2


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def item(engine: DiffusionEngine, image: Image.Image, n: int, seed: int, controls: Controls) -> VariationItem:
    return VariationItem(engine.prepare(image, 64, controls), n, seed)


def run(
    engine: DiffusionEngine,
    size: int,
    *images: tuple[Image.Image, int, int],
    requested: RequestedControls = DEFAULT,
) -> list[list[np.ndarray]]:
    """(image, n, seed) per item, generated in one batch, then finished to the exact size as serving does."""
    controls = engine.controls(requested)
    items = tuple(VariationItem(engine.prepare(image, size, controls), n, seed) for image, n, seed in images)
    return [engine.finish(frames, size) for frames in engine.generate(Batch(items, size, controls))]


def test_counts_and_exact_sizes(engine: DiffusionEngine) -> None:
    out = run(engine, 256, (red(), 2, 1), (red(), 1, 2))
    assert [len(images) for images in out] == [2, 1]
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for images in out for img in images)


def test_batched_equals_single(engine: DiffusionEngine) -> None:
    alone = run(engine, 64, (blue(), 2, 7))[0]
    batched = run(engine, 64, (red(), 3, 1), (blue(), 2, 7))[1]
    assert_same_images(alone, batched)


def test_a_seed_gives_the_same_images_and_distinct_ones_across_n(engine: DiffusionEngine) -> None:
    first = run(engine, 64, (red(), 3, 5))[0]
    again = run(engine, 64, (red(), 3, 5))[0]
    other = run(engine, 64, (red(), 1, 6))[0]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert min(mean_difference(first[i], first[j]) for i, j in ((0, 1), (0, 2), (1, 2))) > 5
    assert mean_difference(first[0], other[0]) > 5


def test_the_input_image_conditions_the_output(engine: DiffusionEngine) -> None:
    a = run(engine, 64, (red(), 1, 3))[0][0]
    b = run(engine, 64, (Image.new("RGB", (48, 48), (0, 255, 0)), 1, 3))[0][0]
    assert not np.array_equal(a, b)


def test_steps_and_guidance_change_the_output(engine: DiffusionEngine) -> None:
    base = run(engine, 64, (red(), 1, 3))[0][0]
    more_steps = run(engine, 64, (red(), 1, 3), requested=RequestedControls(steps=6))[0][0]
    guidance = run(engine, 64, (red(), 1, 3), requested=RequestedControls(guidance_scale=1.0))[0][0]
    # Random tiny weights change little per step; what matters is that the controls reach the pipeline.
    assert not np.array_equal(base, more_steps)
    if engine.capabilities.guidance_scale:
        assert not np.array_equal(base, guidance)
    else:  # declared ignored (FLUX.1 [schnell] has no guidance input): it changes nothing
        assert np.array_equal(base, guidance)


def test_strength_runs_img2img_from_the_input_or_is_refused(engine: DiffusionEngine) -> None:
    low = RequestedControls(strength=0.5, steps=10)
    if not engine.capabilities.img2img:
        with pytest.raises(ControlInvalid) as refused:
            engine.controls(low)
        assert refused.value.param == "strength"
        return
    full = run(engine, 64, (red(), 1, 3), requested=RequestedControls(steps=10))[0][0]
    kept = run(engine, 64, (red(), 1, 3), requested=low)[0][0]
    assert mean_difference(full, kept) > 1
    # The same image embedding with another start image: only img2img's path can make these differ.
    controls = engine.controls(RequestedControls(strength=0.2, steps=10))
    conditioning = engine.prepare(red(), 64, controls)
    other_start = dataclasses.replace(conditioning, init=engine.prepare(blue(), 64, controls).init)
    outputs = [
        engine.generate(Batch((VariationItem(prepared, 1, 3),), 64, controls))[0][0]
        for prepared in (conditioning, other_start)
    ]
    assert mean_difference(*outputs) > 1


def test_controls_fill_in_the_model_defaults_and_refuse_zero_steps(engine: DiffusionEngine) -> None:
    assert engine.controls(DEFAULT) == Controls(engine.options.steps, engine.options.guidance_scale, 1.0)
    if engine.capabilities.img2img:
        with pytest.raises(ControlInvalid, match="no denoising step"):
            engine.controls(RequestedControls(strength=0.1, steps=5))


def test_save_and_load_by_path_gives_the_same_images(engine: DiffusionEngine, tmp_path: Path) -> None:
    directory = tmp_path / "saved"
    engine.save_pretrained(directory)  # type: ignore[attr-defined]
    # The engine is recognised from the directory's layout; where its weights need a licence accepted, the
    # operator accepts it, as for any directory of that engine.
    accepted = [engine.license_terms.id] if engine.license_terms else []
    config = model_for_spec(str(directory), accepted)
    assert config.engine == engine.engine_id and config.name == "saved"
    loaded = config.build()
    assert not loaded.tiny and loaded.options == engine.options
    assert_same_images(run(engine, 64, (red(), 2, 11))[0], run(loaded, 64, (red(), 2, 11))[0])


def test_a_lazy_engine_loads_once_on_first_use() -> None:
    engine = engine_types()["stable-unclip"].tiny_random()
    assert not engine.loaded
    engine.controls(DEFAULT)  # resolving controls needs only the options
    assert not engine.loaded
    run(engine, 64, (red(), 1, 1))
    assert engine.loaded


def blended(
    engine: DiffusionEngine, images: list[Image.Image], weights: list[float], n: int, seed: int
) -> VariationItem:
    return VariationItem(engine.prepare(images, 64, engine.controls(DEFAULT), weights), n, seed)


def generate(engine: DiffusionEngine, *items: VariationItem) -> list[list[np.ndarray]]:
    controls = engine.controls(DEFAULT)
    return [list(frames) for frames in engine.generate(Batch(items, 64, controls))]


def test_weights_blend_the_inputs(engine: DiffusionEngine) -> None:
    red_alone = run(engine, 64, (red(), 2, 9))[0]
    blue_alone = run(engine, 64, (blue(), 2, 9))[0]
    # The two inputs are told apart at all (the tiny SDXL twin's adapter moves its pixels least: ~1.3).
    assert mean_difference(red_alone[0], blue_alone[0]) > 0.5
    # 1,0 is the first image alone and 0,1 the second, up to float noise; an equal mix is neither.
    assert_same_images(generate(engine, blended(engine, [red(), blue()], [1, 0], 2, 9))[0], red_alone)
    assert_same_images(generate(engine, blended(engine, [red(), blue()], [0, 1], 2, 9))[0], blue_alone)
    mix = generate(engine, blended(engine, [red(), blue()], [0.5, 0.5], 2, 9))[0]
    assert min(mean_difference(mix[0], red_alone[0]), mean_difference(mix[0], blue_alone[0])) > 0.5
    # Weights are relative: 3,1 is 0.75,0.25.
    assert_same_images(
        generate(engine, blended(engine, [red(), blue()], [3, 1], 1, 9))[0],
        generate(engine, blended(engine, [red(), blue()], [0.75, 0.25], 1, 9))[0],
    )


def test_blended_items_batch_with_others(engine: DiffusionEngine) -> None:
    three = [red(), blue(), Image.new("RGB", (48, 48), (0, 255, 0))]
    mix_alone = generate(engine, blended(engine, three, [0.2, 0.3, 0.5], 2, 4))[0]
    single_alone = generate(engine, blended(engine, [blue()], [1], 1, 5))[0]
    batched = generate(
        engine,
        blended(engine, [blue()], [1], 1, 5),
        blended(engine, three, [0.2, 0.3, 0.5], 2, 4),
        blended(engine, [red(), blue()], [1, 1], 1, 6),
    )
    assert_same_images(batched[0], single_alone)
    assert_same_images(batched[1], mix_alone)


def test_img2img_of_several_images_starts_from_the_first(engine: DiffusionEngine) -> None:
    if not engine.capabilities.img2img:
        return
    controls = engine.controls(RequestedControls(strength=0.5, steps=10))
    two = engine.prepare([red(), blue()], 64, controls, [0, 1])
    first = engine.prepare(red(), 64, controls)
    assert two.init is not None and first.init is not None
    assert torch.equal(two.init, first.init)


def test_measured_times_never_read_as_zero_seconds() -> None:
    from vary.engines.diffusion import about

    assert [about(s) for s in (95.4, 12.0, 2.46, 0.4, 0.012, 0.0001)] == [
        "95 s", "12 s", "2.5 s", "0.4 s", "12 ms", "under 1 ms"
    ]  # fmt: skip
