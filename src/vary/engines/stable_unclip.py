"""Stable unCLIP 2.1 (and -small): SD 2.1 conditioned on a noised CLIP image embedding; its tiny-random twin.

unCLIP's variation knob is `noise_level`: how much noise is added to the image embedding before it
conditions the UNet (0 = closest to the input). The model has no img2img path, so a request's
`strength` must stay 1; `noise_level` is set per model in the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor

from vary.engines import tiny
from vary.engines.base import Batch, Capabilities
from vary.engines.diffusion import DiffusionEngine, EngineOptions, clip_image_processor
from vary.engines.registry import register_engine
from vary.engines.weights import (
    HubFiles,
    clip_tokenizer,
    diffusers_model,
    is_local,
    scheduler,
    transformers_model,
)

UNCLIP_REPO = "stabilityai/stable-diffusion-2-1-unclip"
UNCLIP_SMALL_REPO = "stabilityai/stable-diffusion-2-1-unclip-small"


@dataclass(frozen=True)
class StableUnclipOptions(EngineOptions):
    description: str = "Stable unCLIP 2.1 (Stability AI), CLIP image-embedding variations"
    steps: int = 25
    guidance_scale: float = 10.0
    # SD 2.1 is trained at 768 px; every size is rendered there and resized.
    min_render_side: int = 768
    max_render_side: int = 768
    # Noise added to the image embedding, in the image-noising scheduler's timesteps (0 to 999).
    noise_level: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.noise_level < 1000:
            raise ValueError(f"noise_level must be between 0 and 999, not {self.noise_level}")


@register_engine
class StableUnclipEngine(DiffusionEngine):
    engine_id = "stable-unclip"
    also_served_as = {"stable-unclip-small": UNCLIP_SMALL_REPO}
    tiny_name = "tiny-random-stable-unclip"
    options_type = StableUnclipOptions
    default_weights = UNCLIP_REPO
    owned_by = "stabilityai"
    license = "openrail++"
    pipelines = (StableUnCLIPImg2ImgPipeline,)
    image_encoder_kind = "CLIP ViT-H/14 (ViT-L/14 for -small), its embedding noised by noise_level"
    conv_modules = ("vae",)
    capabilities = Capabilities(img2img=False)
    fp16_repos = frozenset({UNCLIP_REPO, UNCLIP_SMALL_REPO})

    options: StableUnclipOptions

    def _load(self) -> None:
        if self.tiny:
            pipeline = build_tiny_pipeline(self.seed)
        else:
            folder = self._local_weights().get("pipeline", Path(self.weights).expanduser())
            processor = CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor")
            pipeline = StableUnCLIPImg2ImgPipeline.from_pretrained(
                folder, feature_extractor=processor, dtype=self.dtype, variant=self.variant(self.weights)
            )
        self.image_processor = pipeline.feature_extractor
        self.pipeline = self._place(pipeline)
        with torch.inference_mode():
            # The empty prompt, once: the image embedding is the only condition.
            self._prompt, _ = self.pipeline.encode_prompt("", self.device, 1, do_classifier_free_guidance=False)

    def hub_files(self) -> dict[str, HubFiles]:
        # Every pipeline component but the safety checker: the text side encodes the empty prompt once.
        if self.tiny or is_local(self.weights):
            return {}
        variant = self.variant(self.weights)
        files = (
            "model_index.json",
            "feature_extractor/preprocessor_config.json",
            *transformers_model("image_encoder", variant),
            *diffusers_model("image_normalizer", variant),
            *scheduler("image_noising_scheduler"),
            *scheduler(),
            *transformers_model("text_encoder", variant),
            *clip_tokenizer("tokenizer"),
            *diffusers_model("unet", variant),
            *diffusers_model("vae", variant),
        )
        return {"pipeline": HubFiles(self.weights, files)}

    def save_pretrained(self, path: Path) -> None:
        self.load()
        self.pipeline.save_pretrained(path)
        self._write_options(path)

    def _render(self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]) -> torch.Tensor:
        controls = batch.controls
        count = rows.shape[0]
        encoder = self.pipeline.image_encoder
        # 1. Each input's CLIP image embedding once, blended per item, one row per output image; the
        #    pipeline noises it by noise_level and adds the zero embedding as the negative.
        embeds = encoder(self._stacked_pixels(batch, encoder.dtype)).image_embeds
        embeds = self._blend(embeds, batch).index_select(0, rows)
        prompt = self._prompt.expand(count, -1, -1)
        # 2. All images in one call; the pipeline decodes.
        output = self.pipeline(
            image_embeds=embeds,
            prompt_embeds=prompt,
            negative_prompt_embeds=prompt,  # the empty prompt is also unCLIP's unconditional one
            noise_level=self.options.noise_level,
            height=side,
            width=side,
            num_inference_steps=controls.steps,
            guidance_scale=controls.guidance_scale,
            generator=generators,
            output_type="pt",
            callback=self._stop_on_step(batch),
        )
        images: torch.Tensor = output.images
        return images


def build_tiny_pipeline(seed: int) -> StableUnCLIPImg2ImgPipeline:
    """Stable unCLIP's architecture at the sizes diffusers' unCLIP tests use; v-prediction, like SD 2.1."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        class_embed_type="projection",
        # The noised image embedding and its noise-level embedding, concatenated.
        projection_class_embeddings_input_dim=2 * tiny.EMBED_DIM,
        cross_attention_dim=tiny.EMBED_DIM,
        layers_per_block=1,
        upcast_attention=True,
        use_linear_projection=True,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=clip_image_processor(tiny.IMAGE_SIDE),
        image_encoder=tiny.vision_encoder(seed),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=tiny.EMBED_DIM),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tiny.tokenizer(),
        text_encoder=tiny.text_encoder(seed),
        unet=unet,
        scheduler=scheduler,
        vae=tiny.vae(seed),
    )
