"""Kandinsky 2.2 variations on diffusers, and its tiny-random twin.

A variation is DALL·E 2's mechanism: the CLIP image embedding of the input conditions the decoder.
The image encoder comes from the prior repository (the prior transformer itself is not needed);
the negative embedding is the encoder's embedding of an all-zero pixel tensor, as the prior pipeline
computes it. Below strength 1 the same decoder runs img2img from the input (KandinskyV22Img2ImgPipeline).

`weights` is the decoder (Hub id or directory) or a local model directory in the layout that
`save_pretrained` writes and `huggingface-cli download <repo> --local-dir` gives: `prior/`
(image_encoder/, image_processor/), `decoder/` (the KandinskyV22Pipeline), and optionally
`vary_model.json` (options).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDPMScheduler,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22Pipeline,
    UNet2DConditionModel,
    VQModel,
)
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vary.engines.base import Batch
from vary.engines.diffusion import DiffusionEngine, EngineOptions, clip_image_processor
from vary.engines.registry import register_engine
from vary.engines.weights import HubFiles, diffusers_model, is_local, scheduler, transformers_model

PRIOR_REPO = "kandinsky-community/kandinsky-2-2-prior"
DECODER_REPO = "kandinsky-community/kandinsky-2-2-decoder"


@dataclass(frozen=True)
class KandinskyOptions(EngineOptions):
    # Kandinsky 2.2 is at its best from 512 to 1024 px; smaller sizes are rendered at 512 and downscaled.
    description: str = "Kandinsky 2.2 (kandinsky-community), image-embedding variations"
    # The prior repository, for its image encoder; None: `prior/` of a local model directory, else the Hub's.
    prior: str | None = None


@register_engine
class KandinskyVariationEngine(DiffusionEngine):
    engine_id = "kandinsky-2.2"
    tiny_name = "tiny-random"
    options_type = KandinskyOptions
    default_weights = DECODER_REPO
    owned_by = "kandinsky-community"
    license = "apache-2.0"
    pipelines = (KandinskyV22Pipeline, KandinskyV22Img2ImgPipeline)
    image_encoder_kind = "CLIP ViT-bigG/14 (the prior repository's image encoder)"
    conv_modules = ("movq",)

    options: KandinskyOptions
    image_processor: CLIPImageProcessor

    @classmethod
    def recognises(cls, path: Path) -> bool:
        # The layout `save_pretrained` writes and both repositories downloaded side by side give.
        return (path / "decoder").is_dir() and (path / "prior").is_dir()

    def hub_files(self) -> dict[str, HubFiles]:
        # The decoder's UNet and MoVQ, and only the image encoder of the prior repository (not its prior
        # transformer or text encoder). Neither repository has an fp16 variant; the encoder is stored in fp16.
        wanted: dict[str, HubFiles] = {}
        if not self.tiny and not is_local(self.weights):
            decoder_files = ("model_index.json", *scheduler(), *diffusers_model("unet"), *diffusers_model("movq"))
            wanted["decoder"] = HubFiles(self.weights, decoder_files, local_name="decoder")
        prior = self.options.prior
        if not self.tiny and not (prior is None and (Path(self.weights).expanduser() / "prior").is_dir()):
            if prior is None or not is_local(prior):
                prior_files = (*transformers_model("image_encoder"), "image_processor/preprocessor_config.json")
                wanted["prior"] = HubFiles(prior or PRIOR_REPO, prior_files, local_name="prior")
        return wanted

    def _load(self) -> None:
        if self.tiny:
            image_encoder, self.image_processor, pipeline = build_tiny_components(self.seed)
        else:
            fetched = self._local_weights()
            local = Path(self.weights).expanduser()
            decoder = fetched.get("decoder") or (local / "decoder" if (local / "decoder").is_dir() else local)
            prior = fetched.get("prior") or Path(self.options.prior or local / "prior").expanduser()
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                prior, subfolder="image_encoder", dtype=self.dtype
            )
            self.image_processor = CLIPImageProcessor.from_pretrained(prior, subfolder="image_processor")
            pipeline = KandinskyV22Pipeline.from_pretrained(decoder, dtype=self.dtype)
        self.image_encoder = image_encoder.to(self.device, self.dtype).eval()
        self.pipeline = self._place(pipeline)
        # The same modules (and sampler) through diffusers' img2img pipeline, for strength below 1.
        self.img2img = KandinskyV22Img2ImgPipeline(**self.pipeline.components)
        self.img2img.set_progress_bar_config(disable=True)
        side = self.image_encoder.config.image_size
        with torch.inference_mode():
            self._negative = self._embed(torch.zeros(1, 3, side, side, device=self.device, dtype=self.dtype))

    def save_pretrained(self, path: Path) -> None:
        self.load()
        self.image_encoder.save_pretrained(path / "prior" / "image_encoder")
        self.image_processor.save_pretrained(path / "prior" / "image_processor")
        self.pipeline.save_pretrained(path / "decoder")
        self._write_options(path)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        embeds: torch.Tensor = self.image_encoder(pixel_values=pixels).image_embeds
        return embeds

    def _render(self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]) -> torch.Tensor:
        controls = batch.controls
        # 1. One CLIP image embedding per input, blended per item, one row per output image; the blank
        #    image's as negative.
        embeds = self._embed(self._stacked_pixels(batch, self.image_encoder.dtype))
        image_embeds = self._blend(embeds, batch).index_select(0, rows)
        negative = self._negative.expand(image_embeds.shape[0], -1)
        # 2. Denoise all images in one call (guidance is batched inside), from noise or from the input.
        common = {
            "image_embeds": image_embeds,
            "negative_image_embeds": negative,
            "height": side,
            "width": side,
            "num_inference_steps": controls.steps,
            "guidance_scale": controls.guidance_scale,
            "generator": generators,
            "output_type": "latent",
            "callback_on_step_end": self._stop_on_step_end(batch),
        }
        if controls.strength < 1:
            latents = self.img2img(image=self._init_images(batch, rows), strength=controls.strength, **common).images
        else:
            latents = self.pipeline(**common).images
        # 3. MoVQ decodes; [-1, 1] to [0, 1].
        decoded: torch.Tensor = self.pipeline.movq.decode(latents, force_not_quantize=True).sample
        return decoded * 0.5 + 0.5


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
