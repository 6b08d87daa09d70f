"""SDXL conditioned on the input image alone through IP-Adapter-Plus (ViT-H), and its tiny-random twin.

The prompt is empty; the image enters through IP-Adapter's decoupled cross-attention, as the
penultimate hidden states of a CLIP ViT-H/14 vision tower (the "plus" variant's Resampler input).
The negative is the tower's output for an all-zero image, as diffusers' own encode_image makes it.
Below strength 1, SDXL's img2img pipeline starts from the input with the same modules.

`weights` is an SDXL pipeline (Hub id or directory). A local directory may hold the image encoder
in `image_encoder/` and the adapter in `ip_adapter/`, which is what `save_pretrained` writes;
otherwise both come from h94/IP-Adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPVisionModelWithProjection

from vary.engines import tiny
from vary.engines.base import Batch
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

SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
IP_ADAPTER_REPO = "h94/IP-Adapter"
IP_ADAPTER_DIR = "ip_adapter"
IMAGE_ENCODER_DIR = "image_encoder"


@dataclass(frozen=True)
class SdxlIpAdapterOptions(EngineOptions):
    description: str = "SDXL base 1.0 with IP-Adapter-Plus (ViT-H), image-only conditioning"
    steps: int = 30
    guidance_scale: float = 5.0
    # SDXL is trained at 1024 px; smaller renders lose detail, so smaller sizes are downscaled from 1024.
    min_render_side: int = 1024
    max_render_side: int = 1024
    # How strongly the image conditions the UNet (IP-Adapter's scale).
    ip_adapter_scale: float = 1.0
    ip_adapter: str = IP_ADAPTER_REPO
    ip_adapter_subfolder: str = "sdxl_models"
    ip_adapter_weight_name: str = "ip-adapter-plus_sdxl_vit-h.safetensors"
    image_encoder: str = IP_ADAPTER_REPO
    image_encoder_subfolder: str = "models/image_encoder"
    # e.g. "fp16": the repo's half-precision files, half the download; None: fp16 where the model runs in
    # float16 and the repository is known to serve it (SDXL base 1.0 does).
    variant: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ip_adapter_scale <= 2:
            raise ValueError(f"ip_adapter_scale must be between 0 and 2, not {self.ip_adapter_scale}")


@register_engine
class SdxlIpAdapterEngine(DiffusionEngine):
    engine_id = "sdxl-ip-adapter"
    tiny_name = "tiny-random-sdxl-ip-adapter"
    options_type = SdxlIpAdapterOptions
    default_weights = SDXL_REPO
    owned_by = "stabilityai"
    # SDXL base 1.0 is CreativeML Open RAIL++-M; the IP-Adapter weights are Apache-2.0.
    license = "openrail++ (SDXL base 1.0), apache-2.0 (IP-Adapter)"
    pipelines = (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline)
    image_encoder_kind = "CLIP ViT-H/14 through IP-Adapter-Plus's Resampler"
    conv_modules = ("vae",)
    fp16_repos = frozenset({SDXL_REPO})

    options: SdxlIpAdapterOptions

    def _load(self) -> None:
        options = self.options
        if self.tiny:
            pipeline = build_tiny_pipeline(self.seed)
            adapter: dict[str, dict[str, torch.Tensor]] | str | Path = tiny_ip_adapter_state_dict(
                pipeline.unet, self.seed
            )
            subfolder, weight_name = "", ""
            self.image_processor = clip_image_processor(tiny.IMAGE_SIDE)
        else:
            fetched = self._local_weights()
            local = Path(self.weights).expanduser()
            if "image_encoder" in fetched:
                encoder_source, encoder_subfolder = fetched["image_encoder"], options.image_encoder_subfolder
            elif (local / IMAGE_ENCODER_DIR).is_dir():
                encoder_source, encoder_subfolder = local, IMAGE_ENCODER_DIR
            else:
                encoder_source, encoder_subfolder = Path(options.image_encoder), options.image_encoder_subfolder
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                encoder_source, subfolder=encoder_subfolder, dtype=self.dtype
            )
            pipeline = StableDiffusionXLPipeline.from_pretrained(
                fetched.get("pipeline", local),
                image_encoder=image_encoder,
                dtype=self.dtype,
                variant=options.variant or self.variant(self.weights),
            )
            if "ip_adapter" in fetched:
                adapter, subfolder = fetched["ip_adapter"], options.ip_adapter_subfolder
            elif (local / IP_ADAPTER_DIR).is_dir():
                adapter, subfolder = local, IP_ADAPTER_DIR
            else:
                adapter, subfolder = Path(options.ip_adapter), options.ip_adapter_subfolder
            weight_name = options.ip_adapter_weight_name
            self.image_processor = clip_image_processor(image_encoder.config.image_size)
        # Our own image embeddings go in, so the adapter loads without diffusers' image encoder lookup.
        pipeline.load_ip_adapter(adapter, subfolder=subfolder, weight_name=weight_name, image_encoder_folder=None)
        pipeline.set_ip_adapter_scale(options.ip_adapter_scale)
        self.pipeline = self._place(pipeline)
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(self.pipeline)
        self.img2img.set_progress_bar_config(disable=True)
        self.image_encoder: CLIPVisionModelWithProjection = self.pipeline.image_encoder
        with torch.inference_mode():
            # The empty prompt, once: the image is the only condition.
            self._prompt = self.pipeline.encode_prompt("", device=self.device, do_classifier_free_guidance=True)
            side = self.image_encoder.config.image_size
            self._negative = self._hidden(torch.zeros(1, 3, side, side, device=self.device, dtype=self.dtype))

    def hub_files(self) -> dict[str, HubFiles]:
        # SDXL's UNet, VAE, both text encoders and tokenizers (the empty prompt); IP-Adapter's ViT-H image
        # encoder and the one adapter file. SDXL base serves fp16 files; IP-Adapter's encoder has no variant.
        if self.tiny:
            return {}
        options, local = self.options, Path(self.weights).expanduser()
        wanted: dict[str, HubFiles] = {}
        if not is_local(self.weights):
            variant = options.variant or self.variant(self.weights)
            pipeline_files = (
                "model_index.json",
                *scheduler(),
                *diffusers_model("unet", variant),
                *diffusers_model("vae", variant),
                *transformers_model("text_encoder", variant),
                *transformers_model("text_encoder_2", variant),
                *clip_tokenizer("tokenizer"),
                *clip_tokenizer("tokenizer_2"),
            )
            wanted["pipeline"] = HubFiles(self.weights, pipeline_files)
        if not (local / IMAGE_ENCODER_DIR).is_dir() and not is_local(options.image_encoder):
            encoder_files = transformers_model(options.image_encoder_subfolder)
            wanted["image_encoder"] = HubFiles(options.image_encoder, encoder_files)
        if not (local / IP_ADAPTER_DIR).is_dir() and not is_local(options.ip_adapter):
            adapter_file = f"{options.ip_adapter_subfolder}/{options.ip_adapter_weight_name}"
            wanted["ip_adapter"] = HubFiles(options.ip_adapter, (adapter_file,))
        return wanted

    def save_pretrained(self, path: Path) -> None:
        """Writes the tiny twin in the layout `_load` reads: the pipeline, its image encoder, the adapter file."""
        if not self.tiny:
            raise NotImplementedError("save_pretrained writes tiny-random twins; real weights are already on disk")
        pipeline = build_tiny_pipeline(self.seed)  # rebuilt: the same seeded weights, without the adapter merged in
        pipeline.save_pretrained(path)
        state = tiny_ip_adapter_state_dict(pipeline.unet, self.seed)
        flat = {f"{group}.{key}": value for group, values in state.items() for key, value in values.items()}
        (path / IP_ADAPTER_DIR).mkdir(parents=True, exist_ok=True)
        save_file(flat, path / IP_ADAPTER_DIR / self.options.ip_adapter_weight_name)
        self._write_options(path)

    def _hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        """IP-Adapter-Plus conditions on the penultimate layer's hidden states, not the pooled embedding."""
        hidden: torch.Tensor = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return hidden

    def _render(self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]) -> torch.Tensor:
        controls = batch.controls
        count = rows.shape[0]
        # 1. Each input encoded once, blended per item (the adapter's input, weighted), one row per output
        #    image; with guidance, negatives first, as diffusers expects precomputed IP-Adapter embeddings.
        hidden = self._hidden(self._stacked_pixels(batch, self.image_encoder.dtype))
        hidden = self._blend(hidden, batch).index_select(0, rows)
        if controls.guidance_scale > 1:
            hidden = torch.cat([self._negative.expand(count, -1, -1), hidden])
        prompt, negative_prompt, pooled, negative_pooled = self._prompt
        common = {
            "prompt_embeds": prompt.expand(count, -1, -1),
            "negative_prompt_embeds": negative_prompt.expand(count, -1, -1),
            "pooled_prompt_embeds": pooled.expand(count, -1),
            "negative_pooled_prompt_embeds": negative_pooled.expand(count, -1),
            "ip_adapter_image_embeds": [hidden[:, None]],  # (rows, images per row, tokens, width)
            "num_inference_steps": controls.steps,
            "guidance_scale": controls.guidance_scale,
            "generator": generators,
            "output_type": "pt",  # the pipeline decodes, upcasting SDXL's VAE where float16 would overflow
            "callback_on_step_end": self._stop_on_step_end(batch),
        }
        # 2. All images in one call, from noise or from the input.
        if controls.strength < 1:
            output = self.img2img(image=self._init_images(batch, rows), strength=controls.strength, **common)
        else:
            output = self.pipeline(height=side, width=side, **common)
        images: torch.Tensor = output.images
        return images


def build_tiny_pipeline(seed: int) -> StableDiffusionXLPipeline:
    """SDXL's architecture at the sizes diffusers' SDXL tests use: two text encoders, text-time embeddings."""
    unet = tiny.unet(
        seed,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + tiny.EMBED_DIM,  # six time ids, the pooled text embedding
        cross_attention_dim=2 * tiny.EMBED_DIM,  # both text encoders' states, concatenated
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=tiny.vae(seed),
        text_encoder=tiny.text_encoder(seed),
        text_encoder_2=tiny.text_encoder_with_projection(seed + 1),
        tokenizer=tiny.tokenizer(),
        tokenizer_2=tiny.tokenizer(),
        unet=unet,
        scheduler=scheduler,
        image_encoder=tiny.vision_encoder(seed),
        feature_extractor=clip_image_processor(tiny.IMAGE_SIDE),
    )


def tiny_ip_adapter_state_dict(unet: UNet2DConditionModel, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Seeded random IP-Adapter-Plus weights for `unet`, in the original checkpoint format diffusers converts.

    `image_proj` is the Resampler (4 layers of perceiver attention with 64-wide heads, then a
    feed-forward); `ip_adapter` holds an image key/value projection per cross-attention layer.
    """
    generator = torch.Generator().manual_seed(seed)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    width = 64  # one head of 64: diffusers infers the head count as width // 64
    embed = tiny.EMBED_DIM
    out = unet.config.cross_attention_dim
    proj: dict[str, torch.Tensor] = {
        "latents": weight(1, 4, width),
        "proj_in.weight": weight(width, embed),
        "proj_in.bias": torch.zeros(width),
        "proj_out.weight": weight(out, width),
        "proj_out.bias": torch.zeros(out),
        "norm_out.weight": torch.ones(out),
        "norm_out.bias": torch.zeros(out),
    }
    for layer in range(4):
        prefix = f"layers.{layer}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[f"{prefix}{norm}.weight"] = torch.ones(width)
            proj[f"{prefix}{norm}.bias"] = torch.zeros(width)
        proj[f"{prefix}0.to_q.weight"] = weight(width, width)
        proj[f"{prefix}0.to_kv.weight"] = weight(2 * width, width)
        proj[f"{prefix}0.to_out.weight"] = weight(width, width)
        proj[f"{prefix}1.1.weight"] = weight(4 * width, width)
        proj[f"{prefix}1.3.weight"] = weight(width, 4 * width)

    # Numbered as IP-Adapter's checkpoints are: every attention layer counts, the cross-attentions are the odd ones.
    attention: dict[str, torch.Tensor] = {}
    channels = unet.config.block_out_channels
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        attention[f"{key}.to_k_ip.weight"] = weight(hidden, out)
        attention[f"{key}.to_v_ip.weight"] = weight(hidden, out)
        key += 2
    return {"image_proj": proj, "ip_adapter": attention}
