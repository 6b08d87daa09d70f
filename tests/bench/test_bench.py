"""The bench's building blocks, fast: the shipped configs reproduce Kandinsky 2.2's arithmetic, and each
part runs on tiny-random so the GPU code path cannot rot on machines without a GPU."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from bench import gpu, png, response, safety
from vary.engines.kandinsky import KandinskyVariationEngine


def real_config_dir(tmp_path: Path) -> Path:
    for part, name in (("unet", "unet.json"), ("movq", "movq.json")):
        (tmp_path / "decoder" / part).mkdir(parents=True)
        shutil.copy(gpu.CONFIGS / name, tmp_path / "decoder" / part / "config.json")
    return tmp_path


@pytest.mark.parametrize(("side", "unet_tflop", "movq_tflop"), [(512, 0.86, 2.0), (1024, 3.71, 9.65)])
def test_shipped_configs_have_kandinsky_22_flops(
    tmp_path: Path, side: int, unet_tflop: float, movq_tflop: float
) -> None:
    directory = real_config_dir(tmp_path)
    one_step = gpu.flops_per_image(directory, side, steps=1) - gpu.flops_per_image(directory, side, steps=0)
    assert one_step / 2 / 1e12 == pytest.approx(unet_tflop, rel=0.01)  # one UNet pass
    assert gpu.flops_per_image(directory, side, steps=0) / 1e12 == pytest.approx(movq_tflop, rel=0.01)
    per_image_25 = gpu.flops_per_image(directory, side, steps=25) / 1e12
    assert per_image_25 == pytest.approx({512: 45, 1024: 195}[side], rel=0.02)


def test_png_part_measures_both_encoders() -> None:
    rows = png.measure(repeats=1, side=256)
    assert [r["image"] for r in rows] == ["256x256 noise", "256x256 smooth"]
    assert all(r["vary_encode_ms"] > 0 and r["pillow_default_ms"] > 0 for r in rows)


def test_response_part_renders_the_same_bytes_all_three_ways() -> None:
    rows = response.measure(n=2, side=64, repeats=1)  # measure() checks the three answers are equal, byte for byte
    assert [r["images"] for r in rows] == ["2 x 64x64 noise", "2 x 64x64 smooth"]
    assert all(r["render_ms"] > 0 and r["hand_built_ms"] > 0 and r["pydantic_whole_ms"] > 0 for r in rows)


def test_baseline_runs_on_a_saved_model(tmp_path: Path) -> None:
    KandinskyVariationEngine.tiny_random().save_pretrained(tmp_path)
    result = gpu.run_baseline(tmp_path, side=64, n=2, repeats=1, device="cpu")
    assert result["images_per_s"] > 0 and result["p50_ms"] > 0
    assert gpu.BASELINE_STEPS == 100
    assert gpu.vary_steps(tmp_path) == 2 and gpu.vary_render_side(tmp_path, 1024) == 64


def test_gpu_cases_parse() -> None:
    from bench.run import parse_cases

    assert parse_cases("1024:10,512:1") == [(1024, 10), (512, 1)]
    for bad in ("1024", "300:1", "512:11", "a:b"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            parse_cases(bad)


def test_safety_part_measures_each_classifier() -> None:
    rows = safety.classifier_costs(repeats=1, side=256)
    assert [(r["classifier"], r["batch"]) for r in rows] == [
        (name, batch) for name in ("open-nsfw", "guardrail (loopback)", "hf (toy ViT)") for batch in (1, 4)
    ]
    assert all(r["ms_per_image"] > 0 for r in rows)


def test_the_timed_stand_in_goes_through_varys_queue_and_batching() -> None:
    """The capacity bench's stand-in (bench only) behind vary's real LocalModel: each of three concurrent
    requests gets its n PNGs of exactly its size, every image made is counted in a batch, and a batch whose
    clients left stops."""
    import asyncio

    from bench.load import input_png
    from bench.timed_engine import TimedEngine
    from tests.conftest import decode_png
    from vary.controls import RequestedControls
    from vary.engines.base import Batch, GenerationCancelled, VariationItem
    from vary.imaging import ImageDecoder, ImageRules, InputImage
    from vary.request import VariationRequest
    from vary.targets.base import Made
    from vary.targets.local_model import LocalModel, QueuePolicy

    engine = TimedEngine("timed", batch_seconds=0.2)
    model = LocalModel(engine, decoder=ImageDecoder(ImageRules(max_bytes=1 << 22, max_side=4096)), queue=QueuePolicy())
    batches: list[int] = []
    model.start(on_batch=lambda images, seconds: batches.append(images))

    async def three() -> list[Made]:
        requests = [
            VariationRequest(images=(InputImage(input_png(64)),), n=n, size=256, controls=RequestedControls())
            for n in (1, 2, 3)
        ]
        return await asyncio.gather(*(model.make(request) for request in requests))

    try:
        made = asyncio.run(three())
    finally:
        model.close()
    assert [len(m.pngs) for m in made] == [1, 2, 3]
    assert all(decode_png(png).size == (256, 256) for m in made for png in m.pngs)
    assert sum(batches) == 6
    controls = engine.controls(RequestedControls())
    stopped = Batch(
        items=(VariationItem(conditioning=256, n=1, seed=0),), size=256, controls=controls, should_stop=lambda: True
    )
    with pytest.raises(GenerationCancelled):
        engine.generate(stopped)
