"""The arithmetic one request costs, counted by torch's FLOP counter on the meta device (no memory, no weights).

A request of n images at a render side costs n times the per-image work (every denoiser pass of every step,
and the decoder) plus the image encoder once for its input. The fraction of the arithmetic limit a run
reached is its images/s times this, over the card's measured bf16 matmul rate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, ReduxImageEncoder
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

from bench import gpu
from vary.engines.flux_redux import T5_TOKENS


@dataclass(frozen=True)
class RequestFlops:
    """FLOPs of one request: `per_image` for each of its n images, `per_input` once (its input's encoding)."""

    per_image: float
    per_input: float

    def of(self, n: int) -> float:
        return n * self.per_image + self.per_input


def counted(run: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


# --- Kandinsky 2.2 -------------------------------------------------------------------------------


def kandinsky(directory: Path | None, side: int, steps: int) -> RequestFlops:
    """The decoder UNet twice a step (guidance) and one MoVQ decode per image (bench/gpu.py counts them); the
    CLIP image encoder once per request (the negative embedding is computed once, at load). `directory`: a
    saved model (the layout save_pretrained writes); None: the real architecture, from bench/configs."""
    if directory is None:
        unet, movq, encoder = (_read(gpu.CONFIGS / name) for name in ("unet.json", "movq.json", "image_encoder.json"))
    else:
        unet = _read(directory / "decoder" / "unet" / "config.json")
        movq = _read(directory / "decoder" / "movq" / "config.json")
        encoder = _read(directory / "prior" / "image_encoder" / "config.json")
    per_image = _kandinsky_image(json.dumps([unet, movq], sort_keys=True), side, steps)
    return RequestFlops(per_image, _clip_encoder(json.dumps(encoder, sort_keys=True)))


@cache
def _kandinsky_image(key: str, side: int, steps: int) -> float:
    unet, movq = json.loads(key)
    return gpu.flops_per_image_of(unet, movq, side, steps)


def _read(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(path.read_text())
    return config


@cache
def _clip_encoder(key: str) -> float:
    fields = {k: v for k, v in json.loads(key).items() if not k.startswith("_") and k != "architectures"}
    config = CLIPVisionConfig(**fields)
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(config)
        pixels = torch.randn(1, 3, config.image_size, config.image_size)
        return counted(lambda: encoder(pixel_values=pixels))


# --- FLUX.1 Redux ----------------------------------------------------------------------------------


def flux(configs: Mapping[str, Mapping[str, Any]], side: int, steps: int) -> RequestFlops:
    """One transformer pass a step per image (schnell has no guidance; dev's guidance is an input of the same
    pass), over the image's tokens, the 512 zero T5 tokens and the Redux tokens; one VAE decode per image; the
    SigLIP tower and the Redux embedder once per request."""
    key = json.dumps(configs, sort_keys=True)
    return RequestFlops(
        steps * _flux_transformer(key, side) + _flux_decoder(key, side),
        _flux_encoder(key),
    )


def redux_tokens(configs: Mapping[str, Mapping[str, Any]]) -> int:
    encoder = configs["image_encoder"]
    return int((encoder["image_size"] // encoder["patch_size"]) ** 2)


@cache
def _flux_transformer(key: str, side: int) -> float:
    configs = json.loads(key)
    config = configs["transformer"]
    image_tokens = (side // 16) ** 2  # the VAE's 8x, then 2 x 2 patches
    text_tokens = T5_TOKENS + redux_tokens(configs)
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
        inputs: dict[str, Any] = {
            "hidden_states": torch.randn(1, image_tokens, config["in_channels"]),
            "encoder_hidden_states": torch.randn(1, text_tokens, config["joint_attention_dim"]),
            "pooled_projections": torch.randn(1, config["pooled_projection_dim"]),
            "timestep": torch.ones(1),
            "img_ids": torch.zeros(image_tokens, 3),
            "txt_ids": torch.zeros(text_tokens, 3),
            "return_dict": False,
        }
        if config.get("guidance_embeds"):
            inputs["guidance"] = torch.ones(1)
        return counted(lambda: transformer(**inputs))


@cache
def _flux_decoder(key: str, side: int) -> float:
    config = json.loads(key)["vae"]
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
        latents = torch.randn(1, config["latent_channels"], side // 8, side // 8)
        return counted(lambda: vae.decode(latents))


@cache
def _flux_encoder(key: str) -> float:
    configs = json.loads(key)
    fields = configs["image_encoder"]
    with torch.device("meta"):
        tower = SiglipVisionModel(SiglipVisionConfig(**fields))
        embedder = ReduxImageEncoder.from_config(configs["image_embedder"])
        pixels = torch.randn(1, 3, fields["image_size"], fields["image_size"])

        def both() -> None:
            embedder(tower(pixel_values=pixels).last_hidden_state)

        return counted(both)


def flux_transformer_analytic(configs: Mapping[str, Mapping[str, Any]], side: int) -> float:
    """The same pass counted by hand, to check the counter: every token through its stream's weights (two
    matmul FLOPs a weight), and attention's two products over the joint sequence in every block."""
    config = configs["transformer"]
    width = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = 4 * width
    image_tokens = (side // 16) ** 2
    tokens = image_tokens + T5_TOKENS + redux_tokens(configs)
    # A double block: each stream has q, k, v, out (4 w^2) and a 4x MLP (2 * 4 w^2) of its own.
    double = tokens * (4 * width * width + 2 * width * mlp)
    # A single block: q, k, v and the MLP's first layer in one linear, then one projection back from both.
    single = tokens * (width * (3 * width + mlp) + (width + mlp) * width)
    linear = 2 * (config["num_layers"] * double + config["num_single_layers"] * single)
    attention = (config["num_layers"] + config["num_single_layers"]) * 4 * tokens * tokens * width
    embed = 2 * image_tokens * config["in_channels"] * width + 2 * image_tokens * width * config["in_channels"]
    context = 2 * (T5_TOKENS + redux_tokens(configs)) * config["joint_attention_dim"] * width
    return float(linear + attention + embed + context)
