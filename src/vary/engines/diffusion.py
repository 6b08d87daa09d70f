"""What every diffusers engine shares, written once: options, placement, lazy loading, seeding, batching, sizes.

An engine subclass says only what differs per model: how its weights load (or its tiny twin is
built), what its image encoder sees, and how one batch is rendered. Everything around that, from
the per-image generators to the uint8 frames, lives here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, SchedulerMixin
from PIL import Image
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor

from vary.controls import MAX_GUIDANCE_SCALE, Capabilities
from vary.engines.base import (
    Batch,
    Controls,
    Frames,
    GenerationCancelled,
    ImageProcessor,
    LicenseTerms,
    ModelInfo,
    RequestedControls,
    VariationItem,
)
from vary.engines.weights import HubFiles, WeightsUnavailable, locate
from vary.errors import ControlInvalid, ModelUnavailable
from vary.imaging import fit_to_size
from vary.options import Options

log = logging.getLogger("vary.engines")

# `weights = "tiny-random"` builds an engine's toy twin instead of loading weights.
TINY_WEIGHTS = "tiny-random"
# Rendering options a local weights directory may carry, e.g. what `save_pretrained` wrote.
OPTIONS_FILE = "vary_model.json"
SAMPLERS = ("dpmsolver++", "ddpm", "default")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EngineOptions(Options):
    """Per-model settings: request defaults (steps, guidance) and how to render. Engines add their own fields."""

    # DPM-Solver++ (2M) reaches in 20-25 steps the quality DDPM needs 100 for (Lu et al. 2022), and unlike
    # DDPM it never synchronises with the host. "default" keeps the sampler the weights ship with.
    sampler: str = "dpmsolver++"
    steps: int = 25
    guidance_scale: float = 4.0
    # Sizes outside [min, max] are rendered at the nearest bound and resized to the asked size.
    min_render_side: int = 512
    max_render_side: int = 1024
    description: str = ""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, not {self.steps}")
        if not 0 <= self.guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE:g}, not {self.guidance_scale}")
        if not 1 <= self.min_render_side <= self.max_render_side:
            raise ValueError("min_render_side must be at least 1 and at most max_render_side")

    def render_side(self, size: int, multiple: int) -> int:
        side = min(max(size, self.min_render_side), self.max_render_side)
        return -(-side // multiple) * multiple


@dataclass(frozen=True)
class Placement:
    """Where and how the weights run: the device, the dtype (None = by device), torch.compile or not."""

    device: str | None = None
    dtype: str | None = None
    compile: bool = False


@dataclass(frozen=True)
class Prepared:
    """A request's input as the engine needs it: image-encoder pixels, and the img2img start image if any."""

    pixels: torch.Tensor  # (k, 3, h, w), one per input image, normalised for the image encoder
    init: torch.Tensor | None  # (1, 3, side, side) in [0, 1], only when strength < 1: the first image
    weights: torch.Tensor = field(default_factory=lambda: torch.ones(1))  # (k,), summing to 1


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str | None, half: torch.dtype = torch.float16) -> torch.dtype:
    """Half precision on accelerators (tensor cores), float32 on the CPU, unless asked otherwise.

    `half` is the model's half precision: bfloat16 where float16 overflows (FLUX), which then replaces
    a requested float16 too, with a warning (VARY_DTYPE applies to every model)."""
    if requested:
        dtype = DTYPES[requested]
        if dtype == torch.float16 and half == torch.bfloat16:
            log.warning("this model overflows in float16: it runs in bfloat16 instead of the requested float16")
            return half
        return dtype
    return torch.float32 if device.type == "cpu" else half


def make_sampler(base: SchedulerMixin, name: str) -> SchedulerMixin:
    """The sampler named in the options, built on the noise schedule the weights were trained with."""
    if name == "default":
        return base
    if name == "ddpm":
        return DDPMScheduler.from_config(base.config)
    return DPMSolverMultistepScheduler.from_config(
        base.config, algorithm_type="dpmsolver++", solver_order=2, variance_type=None
    )


def image_seed(seed: int, index: int) -> int:
    """A seed per output image, so each image depends only on (request seed, its index), never on its batch."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def clip_image_processor(side: int = 224) -> CLIPImageProcessor:
    """CLIP's own preprocessing, as the image-encoder repos configure it: bicubic resize, centre crop."""
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": side},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": side, "width": side},
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def _pipeline_class(index: Path) -> str | None:
    """The pipeline class a model_index.json names, or None when it is missing or unreadable."""
    try:
        value = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class LicenseNotAccepted(ValueError):
    """A model's weights are under a licence the operator has not accepted: nothing of them loads."""

    def __init__(self, terms: LicenseTerms, model: str) -> None:
        super().__init__(
            f"model {model}: its weights are under the {terms.name} ({terms.url}), not accepted: "
            f"accept_license = {terms.id!r} in its catalogue entry, or VARY_ACCEPT_LICENSE={terms.id} for --model"
        )
        self.terms = terms


def read_options_file(weights: str) -> dict[str, Any]:
    path = Path(weights).expanduser() / OPTIONS_FILE
    if not path.is_file():
        return {}
    values: dict[str, Any] = json.loads(path.read_text())
    return values


class DiffusionEngine(ABC):
    """A diffusers model served as an engine. A subclass declares its model in class attributes and says how
    its weights load (`_load`) and how one batch renders (`_render`); registered with
    `vary.engines.registry.register_engine`, it needs no other file to change."""

    # The catalogue's `engine`, and the built-in model id of its default weights.
    engine_id: ClassVar[str]
    # More built-in model ids, each with its own weights (e.g. a smaller checkpoint of the same model).
    also_served_as: ClassVar[dict[str, str]] = {}
    # The built-in model id of the tiny twin: the same architecture at toy size, seeded random weights.
    tiny_name: ClassVar[str]
    options_type: ClassVar[type[EngineOptions]] = EngineOptions
    default_weights: ClassVar[str]
    owned_by: ClassVar[str]
    license: ClassVar[str]
    # The diffusers pipelines it runs; a local directory whose model_index.json names one is this engine's.
    pipelines: ClassVar[tuple[type[DiffusionPipeline], ...]] = ()
    # The pipelines' denoising module, by attribute: "unet" (convolutional) or "transformer" (DiT, FLUX).
    denoiser: ClassVar[str] = "unet"
    # What turns the input image into the condition, in words (docs/models.md).
    image_encoder_kind: ClassVar[str] = ""
    # Pipeline modules that run faster channels-last on a GPU (tensor-core convolutions), the VAE's decoder say.
    conv_modules: ClassVar[tuple[str, ...]] = ()
    # What it does with a request's controls; strength below 1 needs `img2img`. The class declares it; an
    # instance whose options change it (FLUX's schnell base has no guidance) overrides `_capabilities`.
    capabilities: Capabilities = Capabilities()
    # The licence an operator must accept before the real weights load (restrictive terms, a gated Hub
    # repository); `license_to_accept` says when it applies. None: nothing to accept.
    license_terms: ClassVar[LicenseTerms | None] = None
    # The half precision it runs in on accelerators: bfloat16 where float16 overflows.
    half_dtype: ClassVar[torch.dtype] = torch.float16
    # The samplers it runs (VARY_SAMPLER applies only where the model runs the one it names).
    samplers: ClassVar[tuple[str, ...]] = SAMPLERS
    # The tiny twin's option overrides: few steps, small renders.
    tiny_options: ClassVar[dict[str, Any]] = {"steps": 2, "min_render_side": 64, "max_render_side": 64}
    # Rendered sides are multiples of this (the VAE's downscale times the denoiser's).
    side_multiple: ClassVar[int] = 64
    # Repositories that serve an "fp16" variant of their weights: half the download where the model runs in float16.
    fp16_repos: ClassVar[frozenset[str]] = frozenset()
    # The preprocessing of the model's image encoder (CLIP's, SigLIP's), set by `_load`.
    image_processor: ImageProcessor

    def __init__(
        self,
        *,
        name: str,
        weights: str | None = None,
        placement: Placement = Placement(),
        license: str | None = None,
        description: str | None = None,
        seed: int = 0,
        accepted_licenses: Collection[str] = (),
        **overrides: Any,
    ) -> None:
        self.name = name
        self.weights = weights or self.default_weights
        self.tiny = self.weights == TINY_WEIGHTS
        self.seed = seed  # for the tiny twin's random weights
        defaults = self.options_type().merged(
            **(self._tiny_defaults() if self.tiny else read_options_file(self.weights))
        )
        self.options = defaults.merged(**overrides)
        terms = self.license_to_accept(self.weights, self.options)
        if terms is not None and terms.id not in accepted_licenses:
            raise LicenseNotAccepted(terms, name)
        self.placement = placement
        self.device = pick_device(placement.device)
        self.dtype = pick_dtype(self.device, placement.dtype, self.half_dtype)
        self.capabilities = self._capabilities()
        self.info = ModelInfo(
            id=name,
            owned_by="vary" if self.tiny else self.owned_by,
            description=description or self.options.description,
            license=license or self._license(),
            capabilities=self.capabilities,
            defaults=self.controls(RequestedControls()),
        )
        self._load_lock = threading.Lock()
        self._loaded = False

    @classmethod
    def tiny_random(cls, *, name: str | None = None, **kwargs: Any) -> DiffusionEngine:
        return cls(name=name or cls.tiny_name, weights=TINY_WEIGHTS, **kwargs)

    @classmethod
    def license_to_accept(cls, weights: str | None, options: EngineOptions) -> LicenseTerms | None:
        """The licence serving `weights` with `options` needs accepted; the tiny twin's random weights need none."""
        return None if weights == TINY_WEIGHTS else cls.license_terms

    def _capabilities(self) -> Capabilities:
        """This model's capabilities: the class's declaration, unless an engine's options change them."""
        return type(self).capabilities

    def _license(self) -> str:
        """The licence /v1/models shows: the class's, unless an engine's options change it."""
        return self.license

    @classmethod
    def recognises(cls, path: Path) -> bool:
        """Whether a local directory holds this engine's model: by default, model_index.json names its pipeline."""
        return _pipeline_class(path / "model_index.json") in {pipeline.__name__ for pipeline in cls.pipelines}

    def _tiny_defaults(self) -> dict[str, Any]:
        description = f"{self.engine_id} architecture at toy size with seeded random weights: outputs noise."
        return {**self.tiny_options, "description": description + " For tests and smoke runs."}

    # --- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        with self._load_lock:
            if not self._loaded:
                started = time.perf_counter()
                # The cause goes to the log in one line, never to the client; the traceback only at debug level.
                try:
                    self._load()
                except WeightsUnavailable as exc:
                    log.error(exc.line())
                    raise ModelUnavailable(self.info.id) from exc
                except Exception as exc:
                    reason = " ".join(str(exc).split())[:300] or "no message"
                    log.error(
                        "loading model %s from %s failed: %s: %s",
                        self.info.id,
                        self.weights,
                        type(exc).__name__,
                        reason,
                    )
                    log.debug("loading model %s failed", self.info.id, exc_info=True)
                    raise ModelUnavailable(self.info.id) from exc
                self._loaded = True
                log.info("loaded model %s (%s) in %.1f s", self.info.id, self.weights, time.perf_counter() - started)

    @abstractmethod
    def _load(self) -> None:
        """Loads `self.weights` (or builds the tiny twin) and places the pipelines with `_place`."""

    def hub_files(self) -> dict[str, HubFiles]:
        """What this model loads from the Hub, by role: the one list `vary pull` fetches and `_load` reads.
        Empty for the tiny twin and for local directories."""
        return {}

    def _local_weights(self) -> dict[str, Path]:
        """Each role's local snapshot folder: the cache first, the Hub only for missing files."""
        return {role: locate(self.info.id, files) for role, files in self.hub_files().items()}

    def variant(self, repo_id: str) -> str | None:
        """ "fp16" where the model runs in float16 and the repository serves that variant."""
        return "fp16" if self.dtype == torch.float16 and repo_id in self.fp16_repos else None

    def _place(self, pipeline: DiffusionPipeline) -> DiffusionPipeline:
        # Cast only when needed: weights loaded with the right dtype stay exactly as diffusers loaded them.
        pipeline = pipeline.to(self.device) if pipeline.dtype == self.dtype else pipeline.to(self.device, self.dtype)
        pipeline.scheduler = make_sampler(pipeline.scheduler, self.options.sampler)
        pipeline.set_progress_bar_config(disable=True)
        if self.device.type == "cuda":
            # Convolutions dominate a UNet and a VAE; NHWC is what tensor-core kernels want (not a transformer's).
            for name in ((self.denoiser,) if self.denoiser == "unet" else ()) + self.conv_modules:
                getattr(pipeline, name).to(memory_format=torch.channels_last)
        if self.placement.compile:
            setattr(pipeline, self.denoiser, torch.compile(getattr(pipeline, self.denoiser)))
        return pipeline

    # --- requests --------------------------------------------------------------------------

    def controls(self, requested: RequestedControls) -> Controls:
        # A control the model ignores resolves to its default, so requests that differ only in it share a batch.
        able = self.capabilities
        steps = requested.steps if requested.steps is not None and able.steps else None
        guidance = requested.guidance_scale if requested.guidance_scale is not None and able.guidance_scale else None
        resolved = Controls(
            steps=steps if steps is not None else self.options.steps,
            guidance_scale=guidance if guidance is not None else self.options.guidance_scale,
            strength=requested.strength if requested.strength is not None else 1.0,
        )
        self.capabilities.refuse_strength(resolved.strength, self.name)
        if int(resolved.steps * resolved.strength) < 1:
            raise ControlInvalid(
                "strength",
                f"'strength' {resolved.strength} with {resolved.steps} steps leaves no denoising step; "
                "raise strength or steps.",
            )
        return resolved

    def prepare(
        self,
        images: Image.Image | Sequence[Image.Image],
        size: int,
        controls: Controls,
        weights: Sequence[float] | None = None,
    ) -> Prepared:
        """The image encoder's input and, for img2img, the start image at render size, on the request's thread.

        Several images are blended by `weights` (normalised here); img2img starts from the first image.
        """
        self.load()
        inputs = [images] if isinstance(images, Image.Image) else list(images)
        blend = torch.tensor(weights if weights is not None else [1.0] * len(inputs), dtype=torch.float32)
        if blend.shape != (len(inputs),) or bool((blend < 0).any()) or float(blend.sum()) <= 0:
            raise ValueError("one non-negative weight per image, not all zero")
        init = None
        if controls.strength < 1:
            side = self.options.render_side(size, self.side_multiple)
            init = _to_tensor(fit_to_size(inputs[0], side))
        pixels = torch.cat([self._encoder_pixels(image) for image in inputs])
        return Prepared(pixels=pixels, init=init, weights=blend / blend.sum())

    def _encoder_pixels(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, h, w) pixels as this model's image encoder expects them: its own CLIP processor's."""
        pixels: torch.Tensor = self.image_processor(image, return_tensors="pt").pixel_values
        return pixels

    def _write_options(self, path: Path) -> None:
        """The options beside saved weights, so a directory serves as it was saved (read_options_file)."""
        (path / OPTIONS_FILE).write_text(json.dumps(dataclasses.asdict(self.options), indent=2))

    def warmup(self) -> None:
        """Loads, then one small batch per render size this model uses (every size when compiled)."""
        self.load()
        controls = self.controls(RequestedControls())
        sizes = (256, 512, 1024) if self.placement.compile else (self.options.min_render_side,)
        grey = Image.new("RGB", (64, 64), (128, 128, 128))
        for side in sorted({self.options.render_side(size, self.side_multiple) for size in sizes}):
            item = VariationItem(self.prepare(grey, side, controls), 1, 0)
            started = time.perf_counter()
            self.generate(Batch(items=(item,), size=side, controls=controls))
            if self.device.type == "cpu" and side == self.options.render_side(0, self.side_multiple):
                self._say_cpu_cost(side, controls.steps, time.perf_counter() - started)

    def _say_cpu_cost(self, side: int, steps: int, seconds: float) -> None:
        """On a CPU an image can take minutes: say so once, from the warm-up's own measured time."""
        log.info(
            "on this CPU one %dx%d image of %s takes about %s (%d steps at %s each, measured by the warm-up); "
            "a GPU is much faster, and VARY_NUM_INFERENCE_STEPS trades quality for time",
            side,
            side,
            self.info.id,
            about(seconds),
            steps,
            about(seconds / steps),
        )

    @torch.inference_mode()
    def generate(self, batch: Batch) -> list[Frames]:
        self.load()
        # 1. One row per output image, pointing at its item; a generator per image, so batching never
        #    changes what one request gets.
        counts = torch.tensor([item.n for item in batch.items])
        rows = torch.repeat_interleave(torch.arange(len(batch.items)), counts).to(self.device, non_blocking=True)
        generators = [
            torch.Generator(device="cpu").manual_seed(image_seed(item.seed, k))
            for item in batch.items
            for k in range(item.n)
        ]
        # 2. The model's own denoising, all images in one call.
        side = self.options.render_side(batch.size, self.side_multiple)
        pixels = self._render(batch, rows, side, generators)
        # 3. Quantise on the device: one byte per pixel crosses to the host, once.
        frames = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        array = frames.cpu().numpy()
        # 4. Split back per item (views, no copies).
        bounds = np.cumsum([0] + [item.n for item in batch.items])
        return [array[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @abstractmethod
    def _render(self, batch: Batch, rows: torch.Tensor, side: int, generators: list[torch.Generator]) -> torch.Tensor:
        """(N, 3, side, side) pixels in [0, 1] on the device, one per row."""

    def finish(self, frames: Frames, size: int) -> list[Frames]:
        if frames.shape[1] == size:
            return list(frames)
        return [np.asarray(fit_to_size(Image.fromarray(frame), size)) for frame in frames]

    # --- helpers for _render ----------------------------------------------------------------

    def _stacked_pixels(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """Every item's encoder pixels, one row per input image (not per output: each input is encoded once)."""
        pixels = torch.cat([item.conditioning.pixels for item in batch.items])
        return pixels.to(device=self.device, dtype=dtype, non_blocking=True)

    def _blend(self, embeds: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-input embeddings (rows as `_stacked_pixels`) to one per item: each item's weighted mean.

        As diffusers' KandinskyV22PriorPipeline.interpolate mixes image embeddings. A weight of 1 with
        the others 0 gives that image's embedding exactly, so one image is conditioned as it always was.
        """
        blended = []
        start = 0
        for item in batch.items:
            weights = item.conditioning.weights.to(device=embeds.device, dtype=embeds.dtype)
            count = weights.shape[0]
            rows = embeds[start : start + count]
            blended.append((weights.view(-1, *[1] * (rows.dim() - 1)) * rows).sum(0))
            start += count
        return torch.stack(blended)

    def _init_images(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """The img2img start images, one per output image."""
        inits = torch.cat([item.conditioning.init for item in batch.items])
        return inits.to(device=self.device, dtype=self.dtype, non_blocking=True).index_select(0, rows)

    @staticmethod
    def _stop_on_step_end(batch: Batch) -> Callable[..., dict[str, Any]]:
        """For pipelines with `callback_on_step_end`: stop between steps once every client has gone."""

        def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if batch.should_stop():
                raise GenerationCancelled
            return tensors

        return callback

    @staticmethod
    def _stop_on_step(batch: Batch) -> Callable[..., None]:
        """The same, for older pipelines that only take `callback(step, timestep, latents)`."""

        def callback(step: int, timestep: Any, latents: Any) -> None:
            if batch.should_stop():
                raise GenerationCancelled

        return callback


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], the range diffusers' image processors expect for tensors."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def about(seconds: float) -> str:
    """A measured time as a person reads it: never "0 s" for something that took time."""
    if seconds >= 10:
        return f"{seconds:.0f} s"
    if seconds >= 0.1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else "under 1 ms"
