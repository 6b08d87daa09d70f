"""FLUX.1 Redux: FLUX.1 redraws the input's content and style with no prompt; its tiny-random twin.

The condition is what diffusers' FluxPriorReduxPipeline hands FluxPipeline when it has no text
encoders: the SigLIP vision tower's last hidden states, through the Redux embedder, appended after
512 zero T5 tokens, and a zero pooled CLIP embedding. vary makes those zeros itself, so neither text
encoder is loaded: T5-XXL's encoder (4.76B parameters, 9.5 GB in bfloat16) and CLIP-L's text tower
(123M). Several inputs are blended as the prior's per-image `prompt_embeds_scale` blends them, with
vary's normalised weights as the scales. Below strength 1 FluxImg2ImgPipeline runs the same modules.

`weights` is a FLUX.1 pipeline (Hub id or directory; FLUX.1 [schnell] by default, [dev] with
`base = "dev"`), or a directory with `base/` (the pipeline) and `redux/` (the Redux repository's
layout), which is what `save_pretrained` and `vary pull --local-dir` write. The Redux adapter and
FLUX.1 [dev] are under the FLUX.1 [dev] Non-Commercial License: the operator accepts it
(`accept_license`) before anything of them loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxPriorReduxPipeline,
    FluxTransformer2DModel,
    ReduxImageEncoder,
)
from diffusers.pipelines.flux.pipeline_flux_img2img import retrieve_latents
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from vary.engines.base import Batch, Capabilities, LicenseTerms
from vary.engines.diffusion import TINY_WEIGHTS, DiffusionEngine, EngineOptions, read_options_file
from vary.engines.registry import register_engine
from vary.engines.weights import (
    HubFiles,
    diffusers_model,
    is_local,
    scheduler,
    sharded_diffusers_model,
    transformers_model,
)

log = logging.getLogger("vary.engines")

SCHNELL_REPO = "black-forest-labs/FLUX.1-schnell"
DEV_REPO = "black-forest-labs/FLUX.1-dev"
REDUX_REPO = "black-forest-labs/FLUX.1-Redux-dev"
BASES = {"schnell": SCHNELL_REPO, "dev": DEV_REPO}
FLUX_DEV_LICENSE = LicenseTerms(
    id="flux-1-dev-non-commercial",
    name="FLUX.1 [dev] Non-Commercial License",
    url="https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
)
GATED_REPOS = frozenset({DEV_REPO, REDUX_REPO})
# `weights` of an engine built from configs with random weights (`with_random_weights`): nothing to load or accept.
RANDOM_WEIGHTS = "random-weights"
# FluxPriorReduxPipeline without text encoders: 512 zero T5 tokens (its max_sequence_length) before the image's.
T5_TOKENS = 512
# FLUX.1 [dev]'s steps where none are given; BFL's and diffusers' Redux examples use 28 to 50.
DEV_STEPS = 28
OFFLOADS = ("none", "model", "group")
TINY_ATTENTION_GAIN = 3.0


@dataclass(frozen=True)
class FluxReduxOptions(EngineOptions):
    description: str = "FLUX.1 Redux (Black Forest Labs): FLUX.1 redraws the input's content and style, no prompt"
    # FLUX.1 samples with the flow-matching Euler scheduler it ships with; DPM-Solver and DDPM are not for it.
    sampler: str = "default"
    # "schnell": FLUX.1 [schnell], Apache-2.0, 4 steps, no guidance; "dev": FLUX.1 [dev], 28 steps,
    # guidance-distilled (the guidance scale is an input of the transformer, not classifier-free guidance).
    base: str = "schnell"
    steps: int = 4
    guidance_scale: float = 2.5  # dev's, as in BFL's and diffusers' Redux examples; schnell ignores it
    # FLUX.1 is good from 512 px to about 2 megapixels: 256 requests are rendered at 512 and downscaled.
    min_render_side: int = 512
    max_render_side: int = 1024
    # The Redux repository (Hub id or directory); None: `redux/` of a local model directory, else the Hub's.
    redux: str | None = None
    # Weights kept in host memory and brought to the GPU as they run, through diffusers' hooks, for GPUs
    # smaller than the model: "model", a whole module at a time (the transformer alone is 23.8 GB); "group",
    # one transformer block at a time, the next one copied meanwhile. "none" (the default): all on the GPU.
    offload: str = "none"
    # The transformer's safetensors files in the base repository (3 in FLUX.1 [schnell] and [dev]).
    transformer_shards: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampler != "default":
            raise ValueError('FLUX.1 samples with its own flow-matching scheduler: sampler must be "default"')
        if self.base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, not {self.base!r}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, not {self.offload!r}")
        if self.transformer_shards < 1:
            raise ValueError("transformer_shards must be at least 1")


@register_engine
class FluxReduxEngine(DiffusionEngine):
    engine_id = "flux-redux"
    tiny_name = "tiny-random-flux-redux"
    options_type = FluxReduxOptions
    default_weights = SCHNELL_REPO
    owned_by = "black-forest-labs"
    license = f"{FLUX_DEV_LICENSE.id} (FLUX.1 Redux [dev]), apache-2.0 (FLUX.1 [schnell])"
    license_terms = FLUX_DEV_LICENSE
    pipelines = (FluxPipeline, FluxImg2ImgPipeline)
    denoiser = "transformer"
    image_encoder_kind = "SigLIP so400m/14 at 384 px, its tokens through the Redux embedder"
    conv_modules = ("vae",)
    side_multiple = 16  # the VAE's 8, times the 2 x 2 patches the transformer packs
    samplers = ("default",)
    half_dtype = torch.bfloat16  # FLUX.1's activations overflow float16

    options: FluxReduxOptions

    def __init__(
        self,
        *,
        name: str,
        weights: str | None = None,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        # The base picks the default weights and steps; the options file of a local directory may name it.
        self.configs = configs
        if configs is not None:
            weights = RANDOM_WEIGHTS
            if kwargs.get("base") is None:  # the base whose transformer the configs describe
                kwargs["base"] = "dev" if configs["transformer"].get("guidance_embeds") else "schnell"
        stored = read_options_file(weights) if weights and weights != TINY_WEIGHTS else {}
        base = kwargs.get("base") or stored.get("base") or FluxReduxOptions.base
        if base == "dev" and weights != TINY_WEIGHTS and kwargs.get("steps") is None and "steps" not in stored:
            kwargs["steps"] = DEV_STEPS
        super().__init__(name=name, weights=weights or BASES.get(base, SCHNELL_REPO), **kwargs)

    @classmethod
    def with_random_weights(
        cls, configs: Mapping[str, Mapping[str, Any]], *, name: str = "flux-redux-random", **kwargs: Any
    ) -> FluxReduxEngine:
        """The architecture `configs` describe (`real_configs()`, or the Hub's config.json contents by component)
        with seeded random weights, built on the device in its dtype: for benchmarks, with nothing downloaded."""
        return cls(name=name, configs=configs, **kwargs)

    @classmethod
    def license_to_accept(cls, weights: str | None, options: EngineOptions) -> LicenseTerms | None:
        return None if weights in (TINY_WEIGHTS, RANDOM_WEIGHTS) else cls.license_terms

    def _capabilities(self) -> Capabilities:
        # FLUX.1 [schnell] is timestep-distilled without a guidance input: guidance_scale changes nothing.
        return dataclasses.replace(type(self).capabilities, guidance_scale=self.options.base == "dev")

    def _license(self) -> str:
        if self.options.base == "dev":
            return f"{FLUX_DEV_LICENSE.id} (FLUX.1 Redux [dev], FLUX.1 [dev])"
        return self.license

    @classmethod
    def recognises(cls, path: Path) -> bool:
        # The layout save_pretrained and `vary pull --local-dir` write, or a FLUX.1 pipeline's own folder.
        return (super().recognises(path / "base") and (path / "redux").is_dir()) or super().recognises(path)

    # --- loading ---------------------------------------------------------------------------

    def hub_files(self) -> dict[str, HubFiles]:
        # The base's transformer, VAE and scheduler (no text encoders or tokenizers: the zeros replace them);
        # the Redux repository's SigLIP encoder, its preprocessing and the embedder (not the single-file original).
        if self.tiny or self.configs is not None:
            return {}
        wanted: dict[str, HubFiles] = {}
        if not is_local(self.weights):
            base_files = (
                "model_index.json",
                *scheduler(),
                *sharded_diffusers_model("transformer", self.options.transformer_shards),
                *diffusers_model("vae"),
            )
            wanted["base"] = HubFiles(self.weights, base_files, local_name="base", gated_by=self._gate(self.weights))
        redux = self.options.redux
        if not (redux is None and (Path(self.weights).expanduser() / "redux").is_dir()):
            if redux is None or not is_local(redux):
                redux_files = (
                    "model_index.json",
                    "feature_extractor/preprocessor_config.json",
                    *transformers_model("image_encoder"),
                    *diffusers_model("image_embedder"),
                )
                repo = redux or REDUX_REPO
                wanted["redux"] = HubFiles(repo, redux_files, local_name="redux", gated_by=self._gate(repo))
        return wanted

    @staticmethod
    def _gate(repo: str) -> str:
        return FLUX_DEV_LICENSE.name if repo in GATED_REPOS else ""

    def _load(self) -> None:
        if self.configs is not None:
            with _building_on(self.device, self.dtype):
                pipeline, prior = build_pipelines(self.configs, self.seed)
        elif self.tiny:
            pipeline, prior = build_tiny_pipelines(self.options.base, self.seed)
        else:
            pipeline, prior = self._from_files()
        _check_weights(pipeline, prior, self.options.base)
        self.image_processor = prior.feature_extractor
        self.prior = self._place(prior)
        self.pipeline = self._place(pipeline)
        # The same modules through diffusers' img2img pipeline, for strength below 1.
        self.img2img = FluxImg2ImgPipeline(**self.pipeline.components)
        self.img2img.set_progress_bar_config(disable=True)

    def _from_files(self) -> tuple[FluxPipeline, FluxPriorReduxPipeline]:
        fetched = self._local_weights()
        local = Path(self.weights).expanduser()
        base = fetched.get("base") or (local / "base" if (local / "base").is_dir() else local)
        redux = fetched.get("redux") or Path(self.options.redux or local / "redux").expanduser()
        # The PIL processor: the same preprocessing as SiglipImageProcessor's, without torchvision.
        processor = SiglipImageProcessorPil.from_pretrained(redux, subfolder="feature_extractor")
        prior = FluxPriorReduxPipeline.from_pretrained(redux, feature_extractor=processor, dtype=self.dtype)
        no_text = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None}
        pipeline = FluxPipeline.from_pretrained(base, **no_text, dtype=self.dtype)
        return pipeline, prior

    def _place(self, pipeline: DiffusionPipeline) -> DiffusionPipeline:
        offload = self.options.offload
        if offload == "none":
            if isinstance(pipeline, FluxPriorReduxPipeline):  # no scheduler, nothing to compile
                return pipeline.to(self.device, self.dtype)
            return super()._place(pipeline)
        if self.placement.compile:
            log.warning("model %s: offload = %r runs the transformer uncompiled", self.info.id, offload)
        if pipeline.dtype != self.dtype:
            pipeline.to(dtype=self.dtype)
        # diffusers' hooks move each module (or each block) to the device for its forward pass, and back.
        if offload == "model":
            pipeline.enable_model_cpu_offload(device=self.device)
        else:
            pipeline.enable_group_offload(
                onload_device=self.device,
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=self.device.type == "cuda",  # the next block's copy overlaps this one's work
            )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def save_pretrained(self, path: Path) -> None:
        """The layout `_load` reads from a directory: base/ (the pipeline, no text encoders), redux/, the options."""
        self.load()
        self.pipeline.save_pretrained(path / "base")
        self.prior.save_pretrained(path / "redux")
        self._write_options(path)

    # --- requests --------------------------------------------------------------------------

    def conditioning(self, batch: Batch, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, pooled_prompt_embeds), one row per output image: FluxPriorReduxPipeline's output
        without text encoders, for each item's images and weights, made without the prior's call."""
        # 1. Each input's Redux tokens, once: SigLIP's last hidden states through the Redux embedder.
        encoder = self.prior.image_encoder
        hidden = encoder(pixel_values=self._stacked_pixels(batch, encoder.dtype)).last_hidden_state
        tokens: torch.Tensor = self.prior.image_embedder(hidden).image_embeds
        if self.options.offload == "model":
            self.prior.maybe_free_model_hooks()
        # 2. Blended per item by its weights (the prior's per-image prompt_embeds_scale, under which the zeros
        #    stay zeros), one row per output image, after the zero T5 tokens; the pooled CLIP embedding is zeros.
        tokens = self._blend(tokens, batch).index_select(0, rows)
        count, config = rows.shape[0], self.pipeline.transformer.config
        text = tokens.new_zeros(count, T5_TOKENS, config.joint_attention_dim)
        return torch.cat([text, tokens], dim=1), tokens.new_zeros(count, config.pooled_projection_dim)

    def _render(self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]) -> torch.Tensor:
        controls = batch.controls
        # 1. The prior's conditioning, one row per output image.
        prompt_embeds, pooled_prompt_embeds = self.conditioning(batch, rows)
        common = {
            "prompt_embeds": prompt_embeds,
            "pooled_prompt_embeds": pooled_prompt_embeds,
            "height": side,
            "width": side,
            "num_inference_steps": controls.steps,
            "guidance_scale": controls.guidance_scale,  # [dev]'s guidance input; [schnell]'s transformer has none
            "generator": generators,
            "output_type": "pt",
            "callback_on_step_end": self._stop_on_step_end(batch),
        }
        # 2. All images in one call, from noise or from the input; the pipeline decodes.
        if controls.strength < 1:
            start = self._start_latents(batch, rows, side, generators)
            output = self.img2img(image=start, strength=controls.strength, **common)
            if self.options.offload == "model":
                self.pipeline.maybe_free_model_hooks()  # the img2img pipeline does not own the hooks
        else:
            output = self.pipeline(**common)
        images: torch.Tensor = output.images
        return images

    def _start_latents(
        self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Each item's start image through the VAE once, its latent drawn with the item's first generator, one row
        per output image: what FluxImg2ImgPipeline does for one image and n images per prompt, item by item (handed
        images, it would draw a latent per row, each with its row's generator)."""
        vae = self.pipeline.vae
        firsts = np.cumsum([0] + [item.n for item in batch.items[:-1]])
        inits = torch.cat([item.conditioning.init for item in batch.items]).to(self.device, non_blocking=True)
        pixels = self.img2img.image_processor.preprocess(inits, height=side, width=side).to(vae.dtype)
        latents: torch.Tensor = torch.cat(
            [
                retrieve_latents(vae.encode(pixels[i : i + 1]), generator=generators[first])
                for i, first in enumerate(firsts)
            ]
        )
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return latents.index_select(0, rows)


def _check_weights(pipeline: FluxPipeline, prior: FluxPriorReduxPipeline, base: str) -> None:
    """Weights that do not fit the options fail the load in one line, not the first request."""
    transformer = pipeline.transformer.config
    if bool(transformer.guidance_embeds) != (base == "dev"):
        other = "schnell" if base == "dev" else "dev"
        guidance = "has" if transformer.guidance_embeds else "has no"
        raise ValueError(f'the transformer {guidance} a guidance input: FLUX.1 [{other}] weights; set base = "{other}"')
    if prior.image_embedder.config.txt_in_features != transformer.joint_attention_dim:
        raise ValueError("the Redux embedder's width does not match the transformer's text width")


@contextlib.contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside are made on `device` in `dtype`: 12B parameters never pass through float32 host memory."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipelines(
    configs: Mapping[str, Mapping[str, Any]], seed: int = 0
) -> tuple[FluxPipeline, FluxPriorReduxPipeline]:
    """FLUX.1 (no text encoders) and the Redux prior from configs by component, as the Hub's config.json files
    give them (unknown keys are ignored), with seeded random weights."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel.from_config(dict(configs["transformer"]))
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(dict(configs["vae"]))
    torch.manual_seed(seed)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(**_public(configs["image_encoder"])))
    torch.manual_seed(seed)
    image_embedder = ReduxImageEncoder.from_config(dict(configs["image_embedder"]))
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(configs["scheduler"])),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    prior = FluxPriorReduxPipeline(
        image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessorPil(**_public(configs["feature_extractor"])),
        image_embedder=image_embedder,
    )
    return pipeline, prior


def build_tiny_pipelines(base: str = "schnell", seed: int = 0) -> tuple[FluxPipeline, FluxPriorReduxPipeline]:
    """The tiny twin: `tiny_configs(base)` with seeded random weights, its attention projections drawn
    TINY_ATTENTION_GAIN times wider than PyTorch's default. At one block, default-drawn attention barely moves the
    residual stream, and attention is the only way the condition reaches the image: the input would move the
    output by 0.3 of 255 levels, where a seed moves it by 35; drawn wider, by about 2.4."""
    pipeline, prior = build_pipelines(tiny_configs(base), seed)
    with torch.no_grad():
        for name, module in pipeline.transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and ".attn." in name:
                module.weight.mul_(TINY_ATTENTION_GAIN)
    return pipeline, prior


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config.json's fields without its bookkeeping (`_name_or_path`, `model_type`, `image_processor_type`...)."""
    bookkeeping = {"model_type", "architectures", "image_processor_type", "processor_class", "transformers_version"}
    return {key: value for key, value in config.items() if not key.startswith("_") and key not in bookkeeping}


def _scheduler_config(base: str) -> dict[str, Any]:
    """The base repository's scheduler_config.json: [dev] shifts its timesteps by the image's size, [schnell] not."""
    shifting = base == "dev"
    return {
        "num_train_timesteps": 1000,
        "shift": 3.0 if shifting else 1.0,
        "use_dynamic_shifting": shifting,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }


def real_configs(base: str = "schnell") -> dict[str, dict[str, Any]]:
    """The real architecture by component, as the Hub's config.json files of FLUX.1 [schnell] / [dev] and
    FLUX.1-Redux-dev give it: 11.9B transformer parameters, a 16-channel VAE, SigLIP so400m/14 at 384 px."""
    return {
        "transformer": {
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": base == "dev",
            "axes_dims_rope": [16, 56, 56],
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "latent_channels": 16,
            "norm_num_groups": 32,
            "sample_size": 1024,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "force_upcast": True,
        },
        "scheduler": _scheduler_config(base),
        "image_encoder": {
            "hidden_size": 1152,
            "image_size": 384,
            "intermediate_size": 4304,
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "patch_size": 14,
        },
        "image_embedder": {"redux_dim": 1152, "txt_in_features": 4096},
        "feature_extractor": _siglip_processor(384),
    }


def tiny_configs(base: str = "schnell") -> dict[str, dict[str, Any]]:
    """The same architecture at toy size, as diffusers' Flux tests size the transformer (one double and one single
    block of two 16-wide heads). Its text and pooled widths stay the real 4096 and 768: the prior's zeros have
    those widths. The VAE keeps the real 8x downscale and 16 latent channels, with few channels per level."""
    return {
        "transformer": {
            **real_configs(base)["transformer"],
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "axes_dims_rope": [4, 6, 6],
        },
        "vae": {
            **real_configs(base)["vae"],
            "block_out_channels": [8, 16, 16, 16],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 32,
        },
        "scheduler": _scheduler_config(base),
        "image_encoder": {
            "hidden_size": 32,
            "image_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "patch_size": 8,
        },
        "image_embedder": {"redux_dim": 32, "txt_in_features": 4096},
        "feature_extractor": _siglip_processor(32),
    }


def _siglip_processor(side: int) -> dict[str, Any]:
    """SigLIP's preprocessing as FLUX.1-Redux-dev's feature_extractor configures it: a bicubic squash to side x side
    (no crop), then [-1, 1]."""
    return {
        "do_resize": True,
        "size": {"height": side, "width": side},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
