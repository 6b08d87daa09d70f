"""Kandinsky 2.2 variations on diffusers, and its tiny-random twin.

A variation is DALL·E 2's mechanism: the CLIP image embedding of the input conditions the decoder.
The image encoder comes from the prior repository (the prior transformer itself is not needed);
the negative embedding is the encoder's embedding of an all-zero pixel tensor, as the prior pipeline
computes it. All images of a batch go through one decoder call.

A local model directory has the layout that `save_pretrained` writes and that
`huggingface-cli download <repo> --local-dir` gives: `prior/` (image_encoder/, image_processor/),
`decoder/` (the KandinskyV22Pipeline), and optionally `vary_model.json` (rendering options).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    KandinskyV22Pipeline,
    SchedulerMixin,
    UNet2DConditionModel,
    VQModel,
)
from PIL import Image
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vary.engines.base import Batch, Frames, GenerationCancelled, ModelInfo, VariationItem
from vary.imaging import fit_to_size

PRIOR_REPO = "kandinsky-community/kandinsky-2-2-prior"
DECODER_REPO = "kandinsky-community/kandinsky-2-2-decoder"
OPTIONS_FILE = "vary_model.json"
LICENSE = "apache-2.0"
SAMPLERS = ("dpmsolver++", "ddpm")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class RenderOptions:
    # DPM-Solver++ (2M) reaches in 20-25 steps the quality DDPM needs 100 for (Lu et al. 2022), so 25 steps
    # cost a quarter of the pipeline's default 100 DDPM steps. "ddpm" keeps the decoder repo's own sampler.
    sampler: str = "dpmsolver++"
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    # Kandinsky 2.2 is at its best from 512 to 1024 px; smaller sizes are rendered at 512 and downscaled.
    min_render_side: int = 512
    max_render_side: int = 1024
    description: str = "Kandinsky 2.2 (kandinsky-community), image-embedding variations"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")

    def render_side(self, size: int) -> int:
        side = min(max(size, self.min_render_side), self.max_render_side)
        return -(-side // 64) * 64  # the decoder works on multiples of 64

    def merged(self, **overrides: Any) -> RenderOptions:
        known = {f.name for f in fields(self)}
        values = {**asdict(self), **{k: v for k, v in overrides.items() if k in known and v is not None}}
        return RenderOptions(**values)

    @classmethod
    def read(cls, directory: Path) -> RenderOptions:
        path = directory / OPTIONS_FILE
        if not path.is_file():
            return cls()
        return cls().merged(**json.loads(path.read_text()))


TINY_OPTIONS = RenderOptions(
    num_inference_steps=2,
    min_render_side=64,
    max_render_side=64,
    description=(
        "Kandinsky 2.2 architecture at toy size with seeded random weights: outputs noise. For tests and smoke runs."
    ),
)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str | None) -> torch.dtype:
    """Half precision on accelerators (tensor cores), float32 on the CPU, unless asked otherwise."""
    if requested:
        return DTYPES[requested]
    return torch.float32 if device.type == "cpu" else torch.float16


def make_sampler(base: SchedulerMixin, name: str) -> SchedulerMixin:
    """The sampler named in the options, built on the noise schedule the decoder was trained with."""
    if name == "ddpm":
        return DDPMScheduler.from_config(base.config)
    # No per-step host synchronisation, unlike DDPM's `if t > 0` on a device tensor.
    return DPMSolverMultistepScheduler.from_config(
        base.config, algorithm_type="dpmsolver++", solver_order=2, variance_type=None
    )


def image_seed(seed: int, index: int) -> int:
    """A seed per output image, so each image depends only on (request seed, its index), never on its batch."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class Placement:
    """Where and how the weights run: the device, the dtype (None = by device), torch.compile or not."""

    device: str | None = None
    dtype: str | None = None
    compile: bool = False


class KandinskyVariationEngine:
    def __init__(
        self,
        *,
        info: ModelInfo,
        image_encoder: CLIPVisionModelWithProjection,
        image_processor: CLIPImageProcessor,
        pipeline: KandinskyV22Pipeline,
        options: RenderOptions,
        placement: Placement = Placement(),
    ) -> None:
        self.info = info
        self.options = options
        self.placement = placement
        self.device = pick_device(placement.device)
        self.dtype = pick_dtype(self.device, placement.dtype)
        self.image_processor = image_processor
        self.image_encoder = image_encoder.to(self.device, self.dtype).eval()
        # Cast only when needed: weights loaded with the right dtype stay exactly as diffusers loaded them.
        self.pipeline = (
            pipeline.to(self.device) if pipeline.dtype == self.dtype else pipeline.to(self.device, self.dtype)
        )
        self.pipeline.scheduler = make_sampler(self.pipeline.scheduler, options.sampler)
        self.pipeline.set_progress_bar_config(disable=True)
        if self.device.type == "cuda":
            # Convolutions dominate the UNet and MoVQ; NHWC is what tensor-core kernels want.
            self.pipeline.unet.to(memory_format=torch.channels_last)
            self.pipeline.movq.to(memory_format=torch.channels_last)
        if placement.compile:
            self.pipeline.unet = torch.compile(self.pipeline.unet)
        side = self.image_encoder.config.image_size
        with torch.inference_mode():
            self._negative = self._embed_pixels(torch.zeros(1, 3, side, side))

    # --- loading --------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        *,
        name: str,
        prior: str | Path,
        decoder: str | Path,
        options: RenderOptions = RenderOptions(),
        placement: Placement = Placement(),
    ) -> KandinskyVariationEngine:
        """From Hub ids (downloaded into the standard HF cache on first use) or local directories."""
        dtype = pick_dtype(pick_device(placement.device), placement.dtype)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(prior, subfolder="image_encoder", dtype=dtype)
        image_processor = CLIPImageProcessor.from_pretrained(prior, subfolder="image_processor")
        pipeline = KandinskyV22Pipeline.from_pretrained(decoder, dtype=dtype)
        return cls(
            info=ModelInfo(id=name, owned_by="kandinsky-community", description=options.description, license=LICENSE),
            image_encoder=image_encoder,
            image_processor=image_processor,
            pipeline=pipeline,
            options=options,
            placement=placement,
        )

    @classmethod
    def from_directory(
        cls, path: Path, *, name: str | None = None, placement: Placement = Placement(), **overrides: Any
    ) -> KandinskyVariationEngine:
        options = RenderOptions.read(path).merged(**overrides)
        return cls.load(
            name=name or path.resolve().name,
            prior=path / "prior",
            decoder=path / "decoder",
            options=options,
            placement=placement,
        )

    @classmethod
    def tiny_random(
        cls, *, name: str = "tiny-random", seed: int = 0, placement: Placement = Placement(), **overrides: Any
    ) -> KandinskyVariationEngine:
        image_encoder, image_processor, pipeline = build_tiny_components(seed)
        options = TINY_OPTIONS.merged(**overrides)
        return cls(
            info=ModelInfo(id=name, owned_by="vary", description=options.description, license=LICENSE),
            image_encoder=image_encoder,
            image_processor=image_processor,
            pipeline=pipeline,
            options=options,
            placement=placement,
        )

    def save_pretrained(self, path: Path) -> None:
        self.image_encoder.save_pretrained(path / "prior" / "image_encoder")
        self.image_processor.save_pretrained(path / "prior" / "image_processor")
        self.pipeline.save_pretrained(path / "decoder")
        (path / OPTIONS_FILE).write_text(json.dumps(asdict(self.options), indent=2))

    # --- generation -----------------------------------------------------------------------

    def warmup(self) -> None:
        """One small batch per render size this model uses (every size when compiled, so none compiles later)."""
        grey = self.prepare(Image.new("RGB", (64, 64), (128, 128, 128)))
        sizes = (256, 512, 1024) if self.placement.compile else (self.options.min_render_side,)
        for side in sorted({self.options.render_side(size) for size in sizes}):
            self.generate(Batch(items=(VariationItem(grey, 1, 0),), size=side))

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """CLIP preprocessing (resize, crop, normalise) on the request's thread, not the GPU's."""
        pixels: torch.Tensor = self.image_processor(image, return_tensors="pt").pixel_values
        return pixels

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(device=self.device, dtype=self.image_encoder.dtype, non_blocking=True)
        embeds: torch.Tensor = self.image_encoder(pixel_values=pixels).image_embeds
        return embeds

    @torch.inference_mode()
    def generate(self, batch: Batch) -> list[Frames]:
        # 1. One CLIP image embedding per input, one row per output image.
        embeds = self._embed_pixels(torch.cat([item.conditioning for item in batch.items]))
        rows = torch.tensor([i for i, item in enumerate(batch.items) for _ in range(item.n)])
        image_embeds = embeds.index_select(0, rows.to(self.device, non_blocking=True))
        negative = self._negative.expand(image_embeds.shape[0], -1)

        # 2. A generator per image: batching never changes what one request gets.
        generators = [
            torch.Generator(device="cpu").manual_seed(image_seed(item.seed, k))
            for item in batch.items
            for k in range(item.n)
        ]

        def stop_if_abandoned(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if batch.should_stop():
                raise GenerationCancelled
            return tensors

        # 3. Denoise all images in one call; classifier-free guidance is batched inside the pipeline.
        side = self.options.render_side(batch.size)
        latents = self.pipeline(
            image_embeds=image_embeds,
            negative_image_embeds=negative,
            height=side,
            width=side,
            num_inference_steps=self.options.num_inference_steps,
            guidance_scale=self.options.guidance_scale,
            generator=generators,
            output_type="latent",
            callback_on_step_end=stop_if_abandoned,
        ).images

        # 4. Decode and quantise to 8 bits on the device: one byte per pixel crosses to the host, once.
        decoded = self.pipeline.movq.decode(latents, force_not_quantize=True).sample
        pixels = ((decoded.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        frames = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()

        # 5. Split back per item (views, no copies).
        bounds = np.cumsum([0] + [item.n for item in batch.items])
        return [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def finish(self, frames: Frames, size: int) -> list[Frames]:
        if frames.shape[1] == size:
            return list(frames)
        return [np.asarray(fit_to_size(Image.fromarray(frame), size)) for frame in frames]


def clip_image_processor() -> CLIPImageProcessor:
    """CLIP's preprocessing as Kandinsky 2.2's prior repo configures it: bicubic resize to 224, centre crop."""
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def build_tiny_components(
    seed: int = 0,
) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor, KandinskyV22Pipeline]:
    """The real architecture at the sizes diffusers' own Kandinsky 2.2 tests use, seeded random weights."""
    embed_dim = 32
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=embed_dim,
            projection_dim=embed_dim,
            image_size=224,
            patch_size=14,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            num_channels=3,
        )
    )
    image_processor = clip_image_processor()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,  # mean and variance, as the real decoder
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=embed_dim,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    torch.manual_seed(seed)
    movq = VQModel(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )
    return image_encoder, image_processor, KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)
