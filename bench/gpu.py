"""GPU part: Kandinsky 2.2's real architecture with random weights, vary against plain diffusers.

The model is built from the published configs in bench/configs (no download, the same FLOPs as the
real weights) and saved in the local-model layout, so vary serves it by path exactly as it would
serve downloaded weights. `smoke=True` swaps in the tiny-random model on the CPU so the whole path
can be exercised anywhere.
"""

from __future__ import annotations

import gc
import inspect
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

from vary.engines.diffusion import clip_image_processor, read_options_file
from vary.engines.kandinsky import KandinskyOptions, KandinskyVariationEngine

CONFIGS = Path(__file__).parent / "configs"


def _config(name: str) -> dict[str, object]:
    return json.loads((CONFIGS / name).read_text())


def build_model_dir(directory: Path, *, smoke: bool) -> Path:
    if smoke:
        KandinskyVariationEngine.tiny_random().save_pretrained(directory)
        return directory
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds instead of minutes
        unet = UNet2DConditionModel.from_config(_config("unet.json")).half()
        movq = VQModel.from_config(_config("movq.json")).half()
        vision = {k: v for k, v in _config("image_encoder.json").items() if k not in ("architectures", "model_type")}
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).half()
    processor = clip_image_processor()
    scheduler = DDPMScheduler.from_config(_config("scheduler.json"))
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(directory / "decoder")
    encoder.save_pretrained(directory / "prior" / "image_encoder")
    processor.save_pretrained(directory / "prior" / "image_processor")
    return directory


def flops_per_image(directory: Path, side: int, steps: int) -> float:
    """Decoder UNet twice per step (guidance) plus one MoVQ decode, counted on the meta device."""
    unet_config = json.loads((directory / "decoder" / "unet" / "config.json").read_text())
    movq_config = json.loads((directory / "decoder" / "movq" / "config.json").read_text())
    return flops_per_image_of(unet_config, movq_config, side, steps)


def flops_per_image_of(unet_config: dict[str, Any], movq_config: dict[str, Any], side: int, steps: int) -> float:
    """The same from the two configs (bench/configs' for the real architecture)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        movq = VQModel.from_config(movq_config)
        latent = side // 2 ** (len(movq_config["block_out_channels"]) - 1)
        x = torch.randn(1, unet_config["in_channels"], latent, latent)
        embeds = torch.randn(1, unet_config["encoder_hid_dim"])
        with FlopCounterMode(display=False) as unet_count:
            unet(x, torch.tensor([500]), encoder_hidden_states=None, added_cond_kwargs={"image_embeds": embeds})
        with FlopCounterMode(display=False) as movq_count:
            movq.decode(x, force_not_quantize=True)
    return float(2 * steps * unet_count.get_total_flops() + movq_count.get_total_flops())


def vary_steps(directory: Path) -> int:
    return _options(directory).steps


def vary_render_side(directory: Path, side: int) -> int:
    return _options(directory).render_side(side, KandinskyVariationEngine.side_multiple)


def _options(directory: Path) -> KandinskyOptions:
    return KandinskyOptions().merged(**read_options_file(str(directory)))  # type: ignore[return-value]


def run_baseline(directory: Path, *, side: int, n: int, repeats: int, device: str) -> dict[str, float]:
    """Plain diffusers with its defaults (DDPM, 100 steps, PIL output), called directly: no server."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    gc.collect()  # the previous case's pipeline goes before this one loads
    if device == "cuda":
        torch.cuda.empty_cache()
    pipe = KandinskyV22Pipeline.from_pretrained(directory / "decoder", dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    encoder = CLIPVisionModelWithProjection.from_pretrained(directory / "prior", subfolder="image_encoder").to(
        device, dtype
    )
    processor = CLIPImageProcessorPil.from_pretrained(directory / "prior", subfolder="image_processor")
    image = Image.new("RGB", (256, 256), (180, 90, 40))

    def once() -> None:
        pixels = processor(image, return_tensors="pt").pixel_values.to(device, dtype)
        with torch.no_grad():
            embeds = encoder(pixels).image_embeds
            negative = encoder(torch.zeros_like(pixels)).image_embeds
        pipe(image_embeds=embeds, negative_image_embeds=negative, height=side, width=side, num_images_per_prompt=n)

    once()
    latencies = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        once()
        if device == "cuda":
            torch.cuda.synchronize()
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        "images_per_s": n * repeats / (sum(latencies) / 1000),
        "p50_ms": statistics.median(latencies),
        "p95_ms": max(latencies) if len(latencies) < 20 else statistics.quantiles(latencies, n=20)[18],
    }


# The baseline passes no step count; this is what that means, read from the pipeline itself.
BASELINE_STEPS = int(inspect.signature(KandinskyV22Pipeline.__call__).parameters["num_inference_steps"].default)
