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

import torch
from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel
from PIL import Image
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vary.engines.base import Batch, GenerationCancelled, ModelInfo, VariationItem
from vary.imaging import array_to_images, fit_to_size

PRIOR_REPO = "kandinsky-community/kandinsky-2-2-prior"
DECODER_REPO = "kandinsky-community/kandinsky-2-2-decoder"
OPTIONS_FILE = "vary_model.json"
LICENSE = "apache-2.0"


@dataclass(frozen=True)
class RenderOptions:
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    # Kandinsky 2.2 is at its best from 512 to 1024 px; smaller sizes are rendered at 512 and downscaled.
    min_render_side: int = 512
    max_render_side: int = 1024
    description: str = "Kandinsky 2.2 (kandinsky-community), image-embedding variations"

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


def image_seed(seed: int, index: int) -> int:
    """A seed per output image, so each image depends only on (request seed, its index), never on its batch."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class KandinskyVariationEngine:
    def __init__(
        self,
        *,
        info: ModelInfo,
        image_encoder: CLIPVisionModelWithProjection,
        image_processor: CLIPImageProcessor,
        pipeline: KandinskyV22Pipeline,
        options: RenderOptions,
        device: torch.device,
    ) -> None:
        self.info = info
        self.options = options
        self.device = device
        self.image_processor = image_processor
        self.image_encoder = image_encoder.to(device).eval()
        self.pipeline = pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)
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
        device: str | None = None,
    ) -> KandinskyVariationEngine:
        """From Hub ids (downloaded into the standard HF cache on first use) or local directories."""
        target = pick_device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(prior, subfolder="image_encoder", dtype=dtype)
        image_processor = CLIPImageProcessor.from_pretrained(prior, subfolder="image_processor")
        pipeline = KandinskyV22Pipeline.from_pretrained(decoder, dtype=dtype)
        return cls(
            info=ModelInfo(id=name, owned_by="kandinsky-community", description=options.description, license=LICENSE),
            image_encoder=image_encoder,
            image_processor=image_processor,
            pipeline=pipeline,
            options=options,
            device=target,
        )

    @classmethod
    def from_directory(
        cls, path: Path, *, name: str | None = None, device: str | None = None, **overrides: Any
    ) -> KandinskyVariationEngine:
        options = RenderOptions.read(path).merged(**overrides)
        return cls.load(
            name=name or path.resolve().name,
            prior=path / "prior",
            decoder=path / "decoder",
            options=options,
            device=device,
        )

    @classmethod
    def tiny_random(
        cls, *, name: str = "tiny-random", seed: int = 0, device: str | None = None, **overrides: Any
    ) -> KandinskyVariationEngine:
        image_encoder, image_processor, pipeline = build_tiny_components(seed)
        options = TINY_OPTIONS.merged(**overrides)
        return cls(
            info=ModelInfo(id=name, owned_by="vary", description=options.description, license=LICENSE),
            image_encoder=image_encoder,
            image_processor=image_processor,
            pipeline=pipeline,
            options=options,
            device=pick_device(device),
        )

    def save_pretrained(self, path: Path) -> None:
        self.image_encoder.save_pretrained(path / "prior" / "image_encoder")
        self.image_processor.save_pretrained(path / "prior" / "image_processor")
        self.pipeline.save_pretrained(path / "decoder")
        (path / OPTIONS_FILE).write_text(json.dumps(asdict(self.options), indent=2))

    # --- generation -----------------------------------------------------------------------

    def warmup(self) -> None:
        grey = Image.new("RGB", (64, 64), (128, 128, 128))
        self.generate(Batch(items=(VariationItem(grey, 1, 0),), size=self.options.min_render_side))

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(device=self.device, dtype=self.image_encoder.dtype)
        embeds: torch.Tensor = self.image_encoder(pixel_values=pixels).image_embeds
        return embeds

    @torch.inference_mode()
    def generate(self, batch: Batch) -> list[list[Image.Image]]:
        # 1. One CLIP image embedding per input, one row per output image.
        pixels = self.image_processor([item.image for item in batch.items], return_tensors="pt").pixel_values
        embeds = self._embed_pixels(pixels)
        counts = torch.tensor([item.n for item in batch.items], device=embeds.device)
        image_embeds = embeds.repeat_interleave(counts, dim=0)
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

        # 3. Decode all images in one call, guidance batched inside the pipeline.
        side = self.options.render_side(batch.size)
        frames = self.pipeline(
            image_embeds=image_embeds,
            negative_image_embeds=negative,
            height=side,
            width=side,
            num_inference_steps=self.options.num_inference_steps,
            guidance_scale=self.options.guidance_scale,
            generator=generators,
            output_type="np",
            callback_on_step_end=stop_if_abandoned,
        ).images

        # 4. Exactly the size asked for, split back per item.
        images = [fit_to_size(img, batch.size) for img in array_to_images(frames)]
        out: list[list[Image.Image]] = []
        start = 0
        for item in batch.items:
            out.append(images[start : start + item.n])
            start += item.n
        return out


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
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,  # bicubic, as the real processor
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
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
