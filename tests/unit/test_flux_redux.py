"""What is FLUX.1 Redux's own: the prior's conditioning made without the prior, weights, the two bases, the
licence to accept, the Hub files, offload, cancellation, and the real architecture with random weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fakes.hub import FLUX_REDUX_FILES, FLUX_SCHNELL_FILES
from tests.unit.test_engines import assert_same_images, blended, blue, generate, mean_difference, red, run
from vary.engines.base import Batch, GenerationCancelled, RequestedControls, VariationItem
from vary.engines.diffusion import LicenseNotAccepted, Placement, pick_dtype
from vary.engines.flux_redux import (
    DEV_REPO,
    FLUX_DEV_LICENSE,
    REDUX_REPO,
    SCHNELL_REPO,
    FluxReduxEngine,
    FluxReduxOptions,
    build_tiny_pipelines,
    real_configs,
    tiny_configs,
)
from vary.service.catalogue import CatalogueEntry, CatalogueError, model_for_spec, read_catalogue
from vary.settings import Settings

ACCEPTED = [FLUX_DEV_LICENSE.id]
GPU = Placement(device="cuda")


@pytest.fixture(scope="module")
def schnell() -> FluxReduxEngine:
    return FluxReduxEngine.tiny_random()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def dev() -> FluxReduxEngine:
    return FluxReduxEngine.tiny_random(base="dev")  # type: ignore[return-value]


def real(**options: object) -> FluxReduxEngine:
    """The real model, built (never loaded): its options, declarations and files."""
    return FluxReduxEngine(name="flux-redux", placement=GPU, accepted_licenses=ACCEPTED, **options)


# --- conditioning ------------------------------------------------------------------------------


def test_the_conditioning_is_the_priors_output_exactly(schnell: FluxReduxEngine) -> None:
    """FluxPriorReduxPipeline without text encoders, its per-image scales vary's normalised weights: equal tensors,
    for one image and for a weighted blend, repeated for the item's n rows (each request in its own batch: the
    SigLIP tower's float sums round by batch shape)."""
    _, prior = build_tiny_pipelines("schnell", schnell.seed)
    controls = schnell.controls(RequestedControls())
    with torch.inference_mode():
        one = VariationItem(schnell.prepare(blue(), 64, controls), 1, 0)
        embeds, pooled = schnell.conditioning(Batch((one,), 64, controls), torch.tensor([0]))
        alone = prior(image=blue())
        mix = VariationItem(schnell.prepare([red(), blue()], 64, controls, [3.0, 1.0]), 2, 0)
        mixed_embeds, mixed_pooled = schnell.conditioning(Batch((mix,), 64, controls), torch.tensor([0, 0]))
        mixed = prior(image=[red(), blue()], prompt_embeds_scale=[0.75, 0.25], pooled_prompt_embeds_scale=[0.75, 0.25])
    assert torch.equal(embeds, alone.prompt_embeds) and torch.equal(pooled, alone.pooled_prompt_embeds)
    for row in (0, 1):
        assert torch.equal(mixed_embeds[row], mixed.prompt_embeds[0])
        assert torch.equal(mixed_pooled[row], mixed.pooled_prompt_embeds[0])
    assert embeds.shape[1] == 512 + 16 and not embeds[:, :512].any() and not pooled.any()


def test_weights_one_and_zero_are_the_first_image_alone(schnell: FluxReduxEngine) -> None:
    """A zero scale adds exact zeros: with weights 1,0 the second image has no influence at all, bit for bit, and
    the images are the first image's alone (up to the float rounding of the encoder's batch of two)."""
    green = Image.new("RGB", (48, 48), (0, 255, 0))
    first = generate(schnell, blended(schnell, [red(), blue()], [1, 0], 2, 9))[0]
    other_second = generate(schnell, blended(schnell, [red(), green], [1, 0], 2, 9))[0]
    assert all(np.array_equal(a, b) for a, b in zip(first, other_second, strict=True))
    assert_same_images(first, run(schnell, 64, (red(), 2, 9))[0])
    second = generate(schnell, blended(schnell, [red(), blue()], [0, 1], 2, 9))[0]
    assert_same_images(second, run(schnell, 64, (blue(), 2, 9))[0])
    assert mean_difference(first[0], second[0]) > 0.5


# --- the two bases -------------------------------------------------------------------------------


def test_schnell_ignores_guidance_and_dev_honours_it(schnell: FluxReduxEngine, dev: FluxReduxEngine) -> None:
    assert not schnell.capabilities.guidance_scale and not schnell.info.capabilities.guidance_scale
    assert dev.capabilities.guidance_scale and dev.info.capabilities.guidance_scale
    # On schnell any guidance resolves to the default: such requests share a batch and get the same images.
    assert schnell.controls(RequestedControls(guidance_scale=9.0)) == schnell.controls(RequestedControls())
    low, high = (run(dev, 64, (red(), 1, 3), requested=RequestedControls(guidance_scale=g))[0][0] for g in (1, 8))
    assert mean_difference(low, high) > 0.5


def test_each_base_has_its_weights_steps_and_licence() -> None:
    schnell, dev = real(), real(base="dev")
    assert (schnell.weights, schnell.options.steps, schnell.options.guidance_scale) == (SCHNELL_REPO, 4, 2.5)
    assert (dev.weights, dev.options.steps, dev.options.guidance_scale) == (DEV_REPO, 28, 2.5)
    assert real(base="dev", steps=40).options.steps == 40
    assert "apache-2.0" in schnell.info.license and FLUX_DEV_LICENSE.id in schnell.info.license
    assert "apache-2.0" not in dev.info.license and FLUX_DEV_LICENSE.id in dev.info.license
    assert dev.info.defaults is not None and dev.info.defaults.steps == 28


def test_weights_of_the_other_base_fail_the_load_in_one_line(
    schnell: FluxReduxEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vary.errors import ModelUnavailable

    schnell.save_pretrained(tmp_path / "m")
    engine = FluxReduxEngine(name="m", weights=str(tmp_path / "m"), accepted_licenses=ACCEPTED, base="dev")
    with caplog.at_level(logging.ERROR, logger="vary.engines"), pytest.raises(ModelUnavailable):
        engine.load()
    (line,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert 'set base = "schnell"' in line and "\n" not in line


def test_options_are_checked() -> None:
    for bad, message in (
        ({"base": "pro"}, "base must be one of schnell, dev"),
        ({"sampler": "dpmsolver++"}, "flow-matching"),
        ({"offload": "disk"}, "offload must be one of"),
        ({"transformer_shards": 0}, "at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            FluxReduxOptions.of(bad)


def test_vary_sampler_does_not_apply_to_flux(caplog: pytest.LogCaptureFixture) -> None:
    entry = CatalogueEntry(name="f", engine="flux-redux", weights="tiny-random")
    with caplog.at_level(logging.WARNING, logger="vary"):
        engine = entry.build(overrides={"sampler": "ddpm"})
    assert engine.options.sampler == "default"
    assert any("VARY_SAMPLER=ddpm does not apply to flux-redux" in r.getMessage() for r in caplog.records)


# --- sizes and precision -------------------------------------------------------------------------


def test_render_sizes_and_precision() -> None:
    options, engine = FluxReduxOptions(), real()
    assert [options.render_side(size, engine.side_multiple) for size in (256, 512, 1024)] == [512, 512, 1024]
    assert engine.side_multiple == 16 and engine.dtype == torch.bfloat16
    assert pick_dtype(torch.device("cuda"), "float16", engine.half_dtype) == torch.bfloat16  # fp16 overflows
    assert pick_dtype(torch.device("cpu"), None, engine.half_dtype) == torch.float32


# --- the licence ------------------------------------------------------------------------------


def test_nothing_of_the_weights_is_built_without_the_licence() -> None:
    with pytest.raises(LicenseNotAccepted) as refused:
        FluxReduxEngine(name="flux-redux")
    assert FLUX_DEV_LICENSE.id in str(refused.value) and FLUX_DEV_LICENSE.name in str(refused.value)
    FluxReduxEngine.tiny_random()  # random weights: nothing to accept


def test_model_flag_is_refused_in_one_line_naming_the_licence_and_the_setting() -> None:
    with pytest.raises(CatalogueError) as refused:
        model_for_spec("flux-redux")
    line = str(refused.value)
    assert "\n" not in line and FLUX_DEV_LICENSE.name in line and FLUX_DEV_LICENSE.url in line
    assert f"--accept-license {FLUX_DEV_LICENSE.id}" in line and f"VARY_ACCEPT_LICENSE={FLUX_DEV_LICENSE.id}" in line
    entry = model_for_spec("flux-redux", ACCEPTED)
    assert entry.accepted_licenses == tuple(ACCEPTED)
    assert model_for_spec("tiny-random-flux-redux").accepted_licenses == ()
    assert model_for_spec("kandinsky-2.2").accepted_licenses == ()


def test_the_setting_takes_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VARY_ACCEPT_LICENSE", f"{FLUX_DEV_LICENSE.id}, other")
    assert Settings().accept_license == (FLUX_DEV_LICENSE.id, "other")


def test_hub_files_are_the_real_repositories_layout_without_text_encoders() -> None:
    files = real().hub_files()
    assert files["base"].repo_id == SCHNELL_REPO and files["redux"].repo_id == REDUX_REPO
    assert set(files["base"].files) == FLUX_SCHNELL_FILES
    assert set(files["redux"].files) == FLUX_REDUX_FILES
    # FLUX.1 [schnell] is open; the Redux adapter and FLUX.1 [dev] are gated behind the licence.
    assert files["base"].gated_by == "" and files["redux"].gated_by == FLUX_DEV_LICENSE.name
    assert real(base="dev").hub_files()["base"].gated_by == FLUX_DEV_LICENSE.name
    assert real(transformer_shards=1).hub_files()["base"].files[2:4] == (
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    )


def test_a_saved_directory_is_recognised_and_needs_nothing_from_the_hub(
    schnell: FluxReduxEngine, tmp_path: Path
) -> None:
    schnell.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"base", "redux", "vary_model.json"}
    assert not (tmp_path / "saved" / "base" / "text_encoder").exists()
    entry = model_for_spec(str(tmp_path / "saved"), ACCEPTED)
    assert entry.engine == "flux-redux" and entry.build().hub_files() == {}
    # A FLUX.1 pipeline's own folder is recognised too; the Redux adapter then comes from the Hub.
    pipeline_only = model_for_spec(str(tmp_path / "saved" / "base"), ACCEPTED).build()
    assert set(pipeline_only.hub_files()) == {"redux"}
    with pytest.raises(CatalogueError, match="--accept-license"):
        model_for_spec(str(tmp_path / "saved"))


# --- offload, cancellation ----------------------------------------------------------------------


@pytest.mark.parametrize("offload", ["model", "group"])
def test_offload_gives_the_same_images(schnell: FluxReduxEngine, offload: str) -> None:
    """diffusers' hooks wrap every module (on a CPU they move nothing): the images are those without offload."""
    offloaded = FluxReduxEngine.tiny_random(offload=offload)
    for strength in (1.0, 0.5):
        requested = RequestedControls(strength=strength, steps=4)
        ours = run(offloaded, 64, (red(), 2, 5), requested=requested)[0]
        assert_same_images(ours, run(schnell, 64, (red(), 2, 5), requested=requested)[0])


def test_a_batch_nobody_waits_for_stops_between_steps(schnell: FluxReduxEngine) -> None:
    controls = schnell.controls(RequestedControls(steps=3))
    checks: list[int] = []

    def gone() -> bool:
        checks.append(1)
        return len(checks) >= 2  # the client leaves during the second step

    item = VariationItem(schnell.prepare(red(), 64, controls), 1, 0)
    with pytest.raises(GenerationCancelled):
        schnell.generate(Batch((item,), 64, controls, should_stop=gone))
    assert len(checks) == 2


# --- the real architecture ---------------------------------------------------------------------


def test_the_real_configs_are_flux_s_sizes() -> None:
    """Built on the meta device (no memory): the parameter counts docs/models.md states."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import SiglipVisionConfig, SiglipVisionModel

    def count(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    configs = real_configs("dev")
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(configs["transformer"])
        vae = AutoencoderKL.from_config(configs["vae"])
        encoder = SiglipVisionModel(SiglipVisionConfig(**configs["image_encoder"]))
    assert round(count(transformer)) == 11901 and round(count(vae), 1) == 83.8 and round(count(encoder)) == 428


def test_random_weights_from_configs_run_on_the_engine_s_own_path() -> None:
    """The benchmark's way in: the architecture from configs (here the tiny ones), random weights, no files."""
    engine = FluxReduxEngine.with_random_weights(tiny_configs(), min_render_side=64, max_render_side=64, steps=2)
    assert engine.hub_files() == {} and engine.options.max_render_side == 64
    images = run(engine, 64, (red(), 2, 1))[0]
    assert len(images) == 2 and images[0].shape == (64, 64, 3)
    assert mean_difference(images[0], images[1]) > 5


def test_non_square_inputs_are_squashed_as_siglip_does(schnell: FluxReduxEngine) -> None:
    """SigLIP resizes to its square without cropping: a wide input keeps its whole width."""
    wide = Image.new("RGB", (96, 32), (0, 0, 0))
    wide.paste((255, 255, 255), (80, 0, 96, 32))  # a white band at the right edge, which a centre crop would drop
    pixels = schnell.prepare(wide, 64, schnell.controls(RequestedControls())).pixels
    assert pixels.shape[-2:] == (32, 32) and float(pixels[0, :, :, -1].mean()) > 0.9


# --- the example catalogue ------------------------------------------------------------------------

EXAMPLE = Path(__file__).parents[2] / "examples" / "flux-redux.toml"


def test_the_flux_redux_example_parses() -> None:
    catalogue = read_catalogue(EXAMPLE)
    assert [m.engine for m in catalogue.models] == ["flux-redux", "fal", "kandinsky-2.2", "route"]
    assert catalogue.models[3].route == ("flux-redux-local", "flux-redux-fal", "kandinsky-2.2")
    assert catalogue.default == "flux-redux" and catalogue.aliases()["dall-e-2"] == "flux-redux"
    assert catalogue.models[0].accepted_licenses == (FLUX_DEV_LICENSE.id,)
