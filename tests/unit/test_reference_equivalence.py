"""vary's images equal diffusers' own pipelines', called directly with the same components, inputs and generators.

For each engine and each shape of request (one image; several images with weights; strength below 1;
n above 1; the request inside a batch shared with other requests), the engine's frames are compared
with the reference pipeline's, called once per request for its n images with one generator per image
(the k-th seeded with `image_seed(seed, k)`, as vary seeds them). The tiny twins are the real
architectures at toy size, in float32 on the CPU.

Where vary deliberately differs, the reference is handed what vary does differently and a test
checks that this is the whole difference:
- the sampler: vary swaps in DPM-Solver++ (2M) by default; the equivalence runs use `sampler="default"`
  (the scheduler the weights ship with) and `test_the_default_sampler_is_the_only_difference` checks
  that vary's default equals the reference with that scheduler swapped in;
- resizing: vary renders at the model's render side and resizes to the asked size with Lanczos
  (`fit_to_size`), and the img2img start image is the input resized the same way; the reference gets
  that start image, and `test_resizing_is_the_only_difference_at_other_sizes` checks the output sizes;
- SD image variations' encoder input: a bicubic resize without antialiasing, as the model was trained
  (its model card), instead of CLIP's processor; the reference gets those pixels as its `image` tensor.
- blending several images is vary's weighted mean of the image embeddings (what Kandinsky's
  `KandinskyV22PriorPipeline.interpolate` does); for the other models the reference computes each
  image's embedding with the pipeline's own encoder and hands the pipeline their weighted mean.
  FLUX.1 Redux's reference is diffusers' own blend: FluxPriorReduxPipeline with the normalised weights
  as its per-image `prompt_embeds_scale` and `pooled_prompt_embeds_scale`.
- FLUX.1 Redux's conditioning: vary builds the prior's zero T5 tokens and zero pooled embedding itself
  instead of calling FluxPriorReduxPipeline; the reference calls the prior, without text encoders.

Tolerance: a request alone in its batch runs the reference's arithmetic in the reference's batch shape,
and its pixels must be equal. Inside a batch shared with other requests the shape differs, and float32
sums round differently with it (BLAS picks its kernels by shape); the random tiny weights amplify that
at a few pixels (diffusers' own pipeline shows the same between a batch of two and two single calls).
There: at most TOLERANCE_MEAN levels on average, and at most TOLERANCE_OFF of the pixel values off by
more than ROUNDING_LEVELS. A mixed-up generator, embedding or start image moves nearly every pixel,
by tens of levels on average.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FluxImg2ImgPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22PriorPipeline,
    PriorTransformer,
    StableDiffusionImageVariationPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UnCLIPScheduler,
)
from PIL import Image

from vary.engines import flux_redux, kandinsky, sd_image_variations, sdxl_ip_adapter, stable_unclip, tiny
from vary.engines.base import Batch, RequestedControls, VariationItem
from vary.engines.diffusion import CLIP_MEAN, CLIP_STD, DiffusionEngine, image_seed
from vary.engines.registry import engine_types
from vary.imaging import fit_to_size

SIDE = 64  # the tiny twins' render side: no resizing unless a test asks for another size
STEPS = 2  # strength 0.5 leaves one denoising step
GUIDANCE = 4.0
# Where vary's batch and the reference's differ in shape: rounding differences, amplified by the random weights.
TOLERANCE_MEAN = 0.5  # levels of 255, averaged over the image
ROUNDING_LEVELS = 3  # a pixel value off by more than this counts as off
TOLERANCE_OFF = 0.01  # the share of pixel values that may be off


# --- inputs ---------------------------------------------------------------------------------


def picture(seed: int, width: int = 56, height: int = 44) -> Image.Image:
    """A smooth gradient with a little noise, not square: resizing and cropping matter for it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    tint = rng.uniform(0.2, 1.0, size=3)
    noise = rng.normal(0, 0.05, size=base.shape)
    return Image.fromarray((np.clip(base * tint + noise, 0, 1) * 255).astype(np.uint8))


@dataclass(frozen=True)
class Req:
    images: tuple[Image.Image, ...]
    weights: tuple[float, ...]  # normalised: they sum to 1
    n: int
    seed: int


def one(seed: int, n: int = 1, picture_seed: int = 1) -> Req:
    return Req((picture(picture_seed),), (1.0,), n, seed)


def blend(seed: int, n: int = 1) -> Req:
    return Req((picture(1), picture(2, 40, 60)), (0.7, 0.3), n, seed)


# --- vary's side: the engine's own path, as LocalModel drives it --------------------------------


def vary_images(engine: DiffusionEngine, requests: Sequence[Req], *, strength: float = 1.0, size: int = SIDE):
    controls = engine.controls(RequestedControls(steps=STEPS, guidance_scale=GUIDANCE, strength=strength))
    items = tuple(
        VariationItem(engine.prepare(list(r.images), size, controls, list(r.weights)), r.n, r.seed) for r in requests
    )
    return [engine.finish(frames, size) for frames in engine.generate(Batch(items, size, controls))]


def quantised(images: np.ndarray) -> np.ndarray:
    """A pipeline's float output in [0, 1] as uint8, rounded as vary and diffusers' numpy_to_pil round."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def generators(req: Req) -> list[torch.Generator]:
    """The request's images' generators: the k-th seeded with image_seed(seed, k), as vary seeds them."""
    return [torch.Generator().manual_seed(image_seed(req.seed, k)) for k in range(req.n)]


# --- the references: diffusers' pipelines, called as their documentation calls them ---------------

Reference = Callable[[Req, float], list[np.ndarray]]  # (request, strength) -> its n (H, W, 3) uint8 images


def kandinsky_reference(engine: DiffusionEngine, sampler: Callable[[Any], Any]) -> Reference:
    """KandinskyV22PriorPipeline.interpolate computes the (blended) image embedding and the negative one
    with the prior repository's image encoder; the decoder pipelines render from them."""
    encoder, processor, decoder = kandinsky.build_tiny_components(engine.seed)
    prior = KandinskyV22PriorPipeline(
        prior=_tiny_prior(),
        image_encoder=encoder,
        text_encoder=_tiny_text_encoder_with_projection(),
        tokenizer=tiny.tokenizer(),
        scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample=True,
            clip_sample_range=10.0,
        ),
        image_processor=processor,
    )
    prior.set_progress_bar_config(disable=True)
    decoder.scheduler = sampler(decoder.scheduler)
    decoder.set_progress_bar_config(disable=True)
    img2img = KandinskyV22Img2ImgPipeline(**decoder.components)
    img2img.set_progress_bar_config(disable=True)

    def render(req: Req, strength: float) -> list[np.ndarray]:
        embeds = prior.interpolate(list(req.images), list(req.weights), num_inference_steps=2)
        common: dict[str, Any] = {
            "image_embeds": embeds.image_embeds,
            "negative_image_embeds": embeds.negative_image_embeds,
            "num_images_per_prompt": req.n,
            "height": SIDE,
            "width": SIDE,
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "generator": generators(req),
            "output_type": "np",
        }
        if strength < 1:
            # vary's resizing: the start image is the first input resized to the render side by fit_to_size.
            output = img2img(image=fit_to_size(req.images[0], SIDE), strength=strength, **common)
        else:
            output = decoder(**common)
        return list(quantised(output.images))

    return render


def stable_unclip_reference(engine: DiffusionEngine, sampler: Callable[[Any], Any]) -> Reference:
    """StableUnCLIPImg2ImgPipeline; the image embedding from its own CLIP processor and encoder, noised by the pipeline.

    Called with one prompt per image and the embedding repeated: given one PIL image and
    num_images_per_prompt > 1 the pipeline draws the embedding noise once (from the first generator),
    where each of vary's images draws its own from its own generator, so that an image depends only on
    its seed, never on its batch; with one row per image, the pipeline draws per row as vary does.
    """
    pipe = stable_unclip.build_tiny_pipeline(engine.seed)
    pipe.scheduler = sampler(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    noise_level = engine.options.noise_level  # type: ignore[attr-defined]

    def render(req: Req, strength: float) -> list[np.ndarray]:
        assert strength == 1, "Stable unCLIP has no img2img path"
        with torch.no_grad():
            embeds = [
                pipe.image_encoder(_processed(pipe.feature_extractor, image)).image_embeds for image in req.images
            ]
        output = pipe(
            prompt=[""] * req.n,
            image_embeds=_weighted(embeds, req.weights).repeat(req.n, 1),
            noise_level=noise_level,
            height=SIDE,
            width=SIDE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=generators(req),
            output_type="np",
        )
        return list(quantised(output.images))

    return render


def sd_image_variations_reference(engine: DiffusionEngine, sampler: Callable[[Any], Any]) -> Reference:
    """StableDiffusionImageVariationPipeline, given the encoder pixels vary makes (the model card's resize).

    Below strength 1 diffusers has no variations img2img pipeline: the reference is its SD img2img
    pipeline, conditioned as the variations pipeline conditions (its own `_encode_image`).
    """
    pipe = sd_image_variations.build_tiny_pipeline(engine.seed)
    pipe.scheduler = sampler(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    modules = {"vae": pipe.vae, "unet": pipe.unet, "scheduler": pipe.scheduler}
    img2img = StableDiffusionImg2ImgPipeline(
        **modules,
        text_encoder=None,
        tokenizer=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    img2img.set_progress_bar_config(disable=True)

    def render(req: Req, strength: float) -> list[np.ndarray]:
        pixels = torch.cat([model_card_pixels(image, pipe.image_encoder.config.image_size) for image in req.images])
        common: dict[str, Any] = {
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "generator": generators(req),
            "num_images_per_prompt": req.n,
            "output_type": "np",
        }
        blended = StableDiffusionImageVariationPipeline(
            vae=pipe.vae,
            image_encoder=BlendedEncoder(pipe.image_encoder, req.weights, pixels),
            unet=pipe.unet,
            scheduler=pipe.scheduler,
            safety_checker=None,
            feature_extractor=pipe.feature_extractor,
            requires_safety_checker=False,
        )
        blended.set_progress_bar_config(disable=True)
        if strength < 1:
            with torch.no_grad():
                embeds = blended._encode_image(pixels[:1], torch.device("cpu"), 1, False)
            output = img2img(
                image=fit_to_size(req.images[0], SIDE),
                strength=strength,
                prompt_embeds=embeds,
                negative_prompt_embeds=torch.zeros_like(embeds),  # the variations pipeline's negative
                **common,
            )
        else:
            output = blended(image=pixels[:1], height=SIDE, width=SIDE, **common)
        return list(quantised(output.images))

    return render


def sdxl_ip_adapter_reference(engine: DiffusionEngine, sampler: Callable[[Any], Any]) -> Reference:
    """SDXL after `load_ip_adapter` (IP-Adapter-Plus), called with `ip_adapter_image` and the empty prompt:
    diffusers encodes the image (and the zero image as the negative) itself."""
    pipe: StableDiffusionXLPipeline = sdxl_ip_adapter.build_tiny_pipeline(engine.seed)
    adapter = sdxl_ip_adapter.tiny_ip_adapter_state_dict(pipe.unet, engine.seed)
    pipe.load_ip_adapter(adapter, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(engine.options.ip_adapter_scale)  # type: ignore[attr-defined]
    pipe.scheduler = sampler(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)

    def render(req: Req, strength: float) -> list[np.ndarray]:
        common: dict[str, Any] = {
            "prompt": "",
            "num_images_per_prompt": req.n,
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "generator": generators(req),
            "output_type": "np",
        }
        if len(req.images) == 1:
            common["ip_adapter_image"] = req.images[0]
        else:
            # Each image encoded by diffusers, the positives mixed by weight; the negative (the zero image's) is shared.
            with torch.no_grad():
                encoded = [
                    pipe.prepare_ip_adapter_image_embeds([image], None, torch.device("cpu"), 1, True)[0]
                    for image in req.images
                ]
            negative = encoded[0].chunk(2)[0]
            positive = _weighted([e.chunk(2)[1] for e in encoded], req.weights)
            common["ip_adapter_image_embeds"] = [torch.cat([negative, positive])]
        if strength < 1:
            output = img2img(image=fit_to_size(req.images[0], SIDE), strength=strength, **common)
        else:
            output = pipe(height=SIDE, width=SIDE, **common)
        return list(quantised(output.images))

    return render


def flux_redux_reference(engine: DiffusionEngine, sampler: Callable[[Any], Any]) -> Reference:
    """FluxPriorReduxPipeline without text encoders turns the request's images into the conditioning (its
    per-image scales are vary's normalised weights); FluxPipeline renders from it, n images per prompt, as
    diffusers' documentation calls them; FluxImg2ImgPipeline below strength 1."""
    base = engine.options.base  # type: ignore[attr-defined]
    pipe, prior = flux_redux.build_tiny_pipelines(base, engine.seed)
    pipe.scheduler = sampler(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    img2img = FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)

    def render(req: Req, strength: float) -> list[np.ndarray]:
        weights = list(req.weights)
        conditioning = prior(image=list(req.images), prompt_embeds_scale=weights, pooled_prompt_embeds_scale=weights)
        common: dict[str, Any] = {
            "prompt_embeds": conditioning.prompt_embeds,
            "pooled_prompt_embeds": conditioning.pooled_prompt_embeds,
            "num_images_per_prompt": req.n,
            "height": SIDE,
            "width": SIDE,
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "generator": generators(req),
            "output_type": "np",
        }
        if strength < 1:
            output = img2img(image=fit_to_size(req.images[0], SIDE), strength=strength, **common)
        else:
            output = pipe(**common)
        return list(quantised(output.images))

    return render


REFERENCES: dict[str, Callable[[DiffusionEngine, Callable[[Any], Any]], Reference]] = {
    "kandinsky-2.2": kandinsky_reference,
    "stable-unclip": stable_unclip_reference,
    "sd-image-variations": sd_image_variations_reference,
    "sdxl-ip-adapter": sdxl_ip_adapter_reference,
    "flux-redux": flux_redux_reference,
    "flux-redux-dev": flux_redux_reference,
}
# Each case's engine and options: FLUX.1 Redux runs on both bases ([dev] has a guidance input, [schnell] none).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    case: ("flux-redux", {"base": "dev"}) if case == "flux-redux-dev" else (case, {}) for case in REFERENCES
}
# The cases whose engine swaps in DPM-Solver++ by default (FLUX.1 keeps its flow-matching scheduler).
SWAPPED_SAMPLER = sorted(
    case for case, (engine_id, _) in CASES.items() if engine_types()[engine_id].options_type().sampler != "default"
)


def as_shipped(scheduler: Any) -> Any:
    return scheduler


def dpm_solver(scheduler: Any) -> Any:
    """DPM-Solver++ (2M) on the weights' own noise schedule: what vary's default sampler means."""
    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", solver_order=2, variance_type=None
    )


# --- small helpers for the references ----------------------------------------------------------


class BlendedEncoder(torch.nn.Module):
    """A CLIP vision tower that answers the pipeline's one image with the weighted mean of the request's
    images' embeddings: the pipeline batches by its `image`, so it is handed the first and this blends them all."""

    def __init__(self, encoder: torch.nn.Module, weights: Sequence[float], pixels: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.weights = torch.tensor(weights)
        self.pixels = pixels

    # What a pipeline asks of its modules to place its tensors.
    @property
    def device(self) -> torch.device:
        return self.encoder.device  # type: ignore[no-any-return]

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype  # type: ignore[no-any-return]

    def forward(self, pixels: torch.Tensor) -> SimpleNamespace:
        assert torch.equal(pixels, self.pixels[:1])
        embeds = self.encoder(self.pixels).image_embeds
        return SimpleNamespace(image_embeds=(self.weights[:, None] * embeds).sum(0, keepdim=True))


def _weighted(embeds: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    return sum((w * e for w, e in zip(weights, embeds, strict=True)), torch.zeros_like(embeds[0]))


def _processed(processor: Any, image: Image.Image) -> torch.Tensor:
    pixels: torch.Tensor = processor(images=image, return_tensors="pt").pixel_values
    return pixels


def model_card_pixels(image: Image.Image, side: int) -> torch.Tensor:
    """Lambda Labs' preprocessing, written out independently of vary: bicubic to side x side, no antialias."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(array, size=(side, side), mode="bicubic", antialias=False)
    return (resized - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _tiny_prior() -> PriorTransformer:
    """The prior transformer at diffusers' test size; interpolate runs it only for the (unused) text branch."""
    torch.manual_seed(0)
    return PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=tiny.EMBED_DIM, num_layers=1)


def _tiny_text_encoder_with_projection() -> Any:
    return tiny.text_encoder_with_projection(0)


# --- fixtures ------------------------------------------------------------------------------------


@dataclass
class Pair:
    engine: DiffusionEngine
    reference: Reference


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def pair(request: pytest.FixtureRequest) -> Pair:
    engine_id, options = CASES[request.param]
    engine = engine_types()[engine_id].tiny_random(sampler="default", **options)
    engine.load()
    return Pair(engine, REFERENCES[request.param](engine, as_shipped))


def assert_equivalent(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray], *, same_batch: bool = True) -> None:
    """`same_batch`: vary's batch has the shape of the reference's call, so the same float32 arithmetic runs:
    equal, but that a last-bit difference (vary's tensor where diffusers converts a PIL image, say) may round
    a pixel to the neighbouring level. Otherwise the rounding tolerance of the module's docstring."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
        shown = f"mean {difference.mean():.4f}, max {difference.max()}, off {(difference > ROUNDING_LEVELS).mean():.4f}"
        if same_batch:
            assert int(difference.max()) <= 1 and float(difference.mean()) <= 0.01, shown
        else:
            assert float(difference.mean()) <= TOLERANCE_MEAN, shown
            assert float((difference > ROUNDING_LEVELS).mean()) <= TOLERANCE_OFF, shown


def references(pair: Pair, req: Req, strength: float = 1.0) -> list[np.ndarray]:
    return pair.reference(req, strength)


# --- the requests ----------------------------------------------------------------------------


def test_one_image(pair: Pair) -> None:
    req = one(seed=11)
    assert_equivalent(vary_images(pair.engine, [req])[0], references(pair, req))


def test_several_images_with_weights(pair: Pair) -> None:
    req = blend(seed=12)
    assert_equivalent(vary_images(pair.engine, [req])[0], references(pair, req))


def test_strength_below_one(pair: Pair) -> None:
    if not pair.engine.capabilities.img2img:
        pytest.skip(f"{pair.engine.engine_id} has no img2img path: strength below 1 is refused (test_engines)")
    req = one(seed=13)
    assert_equivalent(vary_images(pair.engine, [req], strength=0.5)[0], references(pair, req, 0.5))


def test_several_images_per_request(pair: Pair) -> None:
    req = one(seed=14, n=3)
    ours = vary_images(pair.engine, [req])[0]
    assert_equivalent(ours, references(pair, req))
    # They are variations, not copies: each image has its own generator.
    assert np.abs(ours[0].astype(np.int16) - ours[1].astype(np.int16)).mean() > 5


def test_a_request_inside_a_batch_shared_with_others(pair: Pair) -> None:
    ours, others = blend(seed=15, n=2), [one(seed=3, n=1, picture_seed=7), one(seed=4, picture_seed=8)]
    batched = vary_images(pair.engine, [others[0], ours, others[1]])
    assert_equivalent(batched[1], references(pair, ours), same_batch=False)


def test_a_request_inside_an_img2img_batch(pair: Pair) -> None:
    if not pair.engine.capabilities.img2img:
        pytest.skip(f"{pair.engine.engine_id} has no img2img path")
    ours, other = one(seed=16, n=2), one(seed=5, n=1, picture_seed=9)
    batched = vary_images(pair.engine, [other, ours], strength=0.5)
    assert_equivalent(batched[1], references(pair, ours, 0.5), same_batch=False)


# --- where vary deliberately differs ------------------------------------------------------------


@pytest.mark.parametrize("case", SWAPPED_SAMPLER)
def test_the_default_sampler_is_the_only_difference(case: str) -> None:
    """vary's default sampler (DPM-Solver++ 2M) equals the reference with that scheduler swapped in."""
    engine_id, options = CASES[case]
    engine = engine_types()[engine_id].tiny_random(**options)
    assert engine.options.sampler == "dpmsolver++"
    reference = Pair(engine, REFERENCES[case](engine, dpm_solver))
    req = one(seed=21, n=2)
    assert_equivalent(vary_images(engine, [req])[0], references(reference, req))


def test_resizing_is_the_only_difference_at_other_sizes(pair: Pair) -> None:
    """Asked for 256 x 256, vary renders at the model's side and resizes with Lanczos: that, and nothing else."""
    req = one(seed=22)
    assert pair.engine.options.render_side(256, pair.engine.side_multiple) == SIDE
    asked = vary_images(pair.engine, [req], size=256)[0]
    resized = [np.asarray(fit_to_size(Image.fromarray(image), 256)) for image in references(pair, req)]
    assert_equivalent(asked, resized)


def test_sd_image_variations_encodes_as_the_model_card_says() -> None:
    """The one preprocessing difference: the model's own training resize, not CLIP's processor."""
    engine = engine_types()["sd-image-variations"].tiny_random()
    engine.load()
    image = picture(3)
    side = engine.pipeline.image_encoder.config.image_size  # type: ignore[attr-defined]
    ours = engine.prepare(image, SIDE, engine.controls(RequestedControls())).pixels
    assert torch.allclose(ours, model_card_pixels(image, side), atol=1e-6)
    assert not torch.allclose(ours, _processed(engine.pipeline.feature_extractor, image), atol=1e-3)  # type: ignore[attr-defined]
