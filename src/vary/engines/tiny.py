"""Toy-size building blocks shared by the tiny-random twins, sized as diffusers' own pipeline tests size them.

The twins are the real architectures with seeded random weights: they run in well under a second
on a CPU and go through the same engine code as real weights. Their images are noise.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

EMBED_DIM = 32
IMAGE_SIDE = 32  # the tiny image encoders' input side


def vision_encoder(seed: int, *, patch_size: int = 4) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=EMBED_DIM,
            projection_dim=EMBED_DIM,
            image_size=IMAGE_SIDE,
            patch_size=patch_size,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=5,
        )
    )


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        hidden_size=EMBED_DIM,
        projection_dim=EMBED_DIM,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=1000,
        hidden_act="gelu",
    )


def text_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(_text_config())


def text_encoder_with_projection(seed: int) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder: the same tower, plus the projection its pooled embedding comes from."""
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(_text_config())


def unet(seed: int, **architecture: Any) -> UNet2DConditionModel:
    """The two-level cross-attention UNet of diffusers' Stable Diffusion tests; `architecture` adds or
    replaces what a model family needs (SDXL's text-time embedding, for one)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        **{
            "block_out_channels": (32, 64),
            "layers_per_block": 2,
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": EMBED_DIM,
            **architecture,
        }
    )


def tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer with only its special tokens: enough for the empty prompt variations use."""
    return CLIPTokenizer(model_max_length=77)


def vae(seed: int, *, latent_channels: int = 4) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=latent_channels,
        norm_num_groups=32,
    )
