"""Lambda Labs' Stable Diffusion image variations: SD 1.x fine-tuned on CLIP image embeddings; its tiny twin.

The UNet cross-attends to the CLIP ViT-L/14 image embedding instead of text. The model card notes
that training resized the encoder's input to 224x224 without antialiasing, and that matching it
gives better results, so preprocessing here does exactly that rather than CLIP's own resize.
The variations pipeline encodes its input itself, so vary runs its denoising through diffusers' SD
text-to-image and img2img pipelines on the same modules, with the (blended) image embedding as the
"prompt" embedding and zeros as the negative, exactly as the variations pipeline conditions the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    PNDMScheduler,
    StableDiffusionImageVariationPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from vary.engines import tiny
from vary.engines.base import Batch
from vary.engines.diffusion import (
    CLIP_MEAN,
    CLIP_STD,
    DiffusionEngine,
    EngineOptions,
    clip_image_processor,
)
from vary.engines.registry import register_engine
from vary.engines.weights import HubFiles, diffusers_model, is_local, scheduler, transformers_model

VARIATIONS_REPO = "lambdalabs/sd-image-variations-diffusers"


@dataclass(frozen=True)
class SdImageVariationsOptions(EngineOptions):
    description: str = "Stable Diffusion image variations (Lambda Labs), CLIP image-embedding conditioning"
    steps: int = 25
    guidance_scale: float = 3.0
    # SD 1.x is trained at 512 px; every size is rendered there and resized.
    min_render_side: int = 512
    max_render_side: int = 512
    # The model card asks for the v2.0 revision of the Hub repo (ignored for local directories).
    revision: str | None = "v2.0"


@register_engine
class SdImageVariationsEngine(DiffusionEngine):
    engine_id = "sd-image-variations"
    tiny_name = "tiny-random-sd-image-variations"
    options_type = SdImageVariationsOptions
    default_weights = VARIATIONS_REPO
    owned_by = "lambdalabs"
    license = "creativeml-openrail-m"
    pipelines = (StableDiffusionImageVariationPipeline,)
    image_encoder_kind = "CLIP ViT-L/14"
    conv_modules = ("vae",)

    options: SdImageVariationsOptions

    def _load(self) -> None:
        if self.tiny:
            pipeline = build_tiny_pipeline(self.seed)
        else:
            pipeline = StableDiffusionImageVariationPipeline.from_pretrained(
                self._local_weights().get("pipeline", Path(self.weights).expanduser()),
                safety_checker=None,  # vary does not filter images; see docs/licences.md
                feature_extractor=clip_image_processor(),  # unused: vary preprocesses itself
                dtype=self.dtype,
            )
        self.pipeline = self._place(pipeline)
        modules = {
            "vae": self.pipeline.vae,
            "text_encoder": None,
            "tokenizer": None,
            "unet": self.pipeline.unet,
            "scheduler": self.pipeline.scheduler,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
        self.text2img = StableDiffusionPipeline(**modules)
        self.img2img = StableDiffusionImg2ImgPipeline(**modules)
        for pipe in (self.text2img, self.img2img):
            pipe.set_progress_bar_config(disable=True)

    def hub_files(self) -> dict[str, HubFiles]:
        # The image encoder, UNet and VAE at the revision the model card asks for; no safety checker, and the
        # feature extractor is vary's own. The repository has no fp16 variant.
        if self.tiny or is_local(self.weights):
            return {}
        files = (
            "model_index.json",
            *transformers_model("image_encoder"),
            *scheduler(),
            *diffusers_model("unet"),
            *diffusers_model("vae"),
        )
        return {"pipeline": HubFiles(self.weights, files, revision=self.options.revision)}

    def save_pretrained(self, path: Path) -> None:
        self.load()
        self.pipeline.save_pretrained(path)
        self._write_options(path)

    def _encoder_pixels(self, image: Image.Image) -> torch.Tensor:
        """Bicubic resize to the encoder's side without antialiasing, as in training, then CLIP's normalisation."""
        side = self.pipeline.image_encoder.config.image_size
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
        pixels = F.interpolate(pixels, size=(side, side), mode="bicubic", align_corners=False, antialias=False)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def _render(self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]) -> torch.Tensor:
        controls = batch.controls
        encoder = self.pipeline.image_encoder
        # 1. Each input's CLIP image embedding once, blended per item, one row per output image. It stands
        #    in for the text embedding, as in the variations pipeline; the negative is zeros, as there.
        embeds = encoder(self._stacked_pixels(batch, encoder.dtype)).image_embeds
        embeds = self._blend(embeds, batch).index_select(0, rows)[:, None]
        common = {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": torch.zeros_like(embeds),
            "num_inference_steps": controls.steps,
            "guidance_scale": controls.guidance_scale,
            "generator": generators,
            "output_type": "pt",
            "callback_on_step_end": self._stop_on_step_end(batch),
        }
        # 2. All images in one call, from noise or from the input.
        if controls.strength < 1:
            output = self.img2img(image=self._init_images(batch, rows), strength=controls.strength, **common)
        else:
            output = self.text2img(height=side, width=side, **common)
        images: torch.Tensor = output.images
        return images


def build_tiny_pipeline(seed: int) -> StableDiffusionImageVariationPipeline:
    """The architecture at the sizes diffusers' image-variation tests use."""
    return StableDiffusionImageVariationPipeline(
        vae=tiny.vae(seed),
        image_encoder=tiny.vision_encoder(seed),
        unet=tiny.unet(seed),
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=clip_image_processor(tiny.IMAGE_SIDE),
        requires_safety_checker=False,
    )
