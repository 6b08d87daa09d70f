"""What every engine does: turn a batch of variation items into images of exactly the asked size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

# Re-exported: engines speak in these.
from vary.controls import Capabilities as Capabilities
from vary.controls import Controls as Controls
from vary.controls import RequestedControls as RequestedControls

# Images travel as uint8 arrays: (H, W, 3) for one image, (N, H, W, 3) for a request's n images.
Frames = np.ndarray


class GenerationCancelled(Exception):
    """Every client waiting on the batch went away; the engine stopped between steps."""


@dataclass(frozen=True)
class VariationItem:
    """One request's share of a batch: its prepared input, how many variations, and its seed."""

    conditioning: Any  # what the engine's prepare() made of the input image
    n: int
    seed: int


@dataclass(frozen=True)
class Batch:
    """Items that go through one pipeline call; all share an output size and controls."""

    items: tuple[VariationItem, ...]
    size: int
    controls: Controls
    # True once nobody is waiting for the result; engines check it between denoising steps.
    should_stop: Callable[[], bool] = field(default=lambda: False)

    @property
    def total_images(self) -> int:
        return sum(item.n for item in self.items)


@dataclass(frozen=True)
class LicenseTerms:
    """A licence the operator must accept before a model's weights load: restrictive terms, gated on the Hub.

    `id` is what the operator writes to accept it (a catalogue's `accept_license`, VARY_ACCEPT_LICENSE)."""

    id: str
    name: str
    url: str


@dataclass(frozen=True)
class ModelInfo:
    """What /v1/models says about a served model."""

    id: str
    owned_by: str
    description: str
    license: str
    capabilities: Capabilities = Capabilities()
    # The controls a request that gives none gets (a local model's defaults); None: the provider's own.
    defaults: Controls | None = None


class ImageProcessor(Protocol):
    """An image encoder's preprocessing, as transformers' image processors (CLIP's, SigLIP's) do it."""

    def __call__(self, images: Image.Image, *, return_tensors: str) -> Any: ...


class Engine(Protocol):
    """prepare() and finish() are CPU work that runs on request threads; generate() owns the device.

    Keeping the CPU work off the generating thread lets it overlap the next batch on the GPU.
    """

    info: ModelInfo

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None:
        """Loads the weights if they are not loaded yet; thread-safe, so a lazy model loads once."""
        ...

    def warmup(self) -> None: ...

    def controls(self, requested: RequestedControls) -> Controls:
        """The request's controls with this model's defaults filled in; raises ControlInvalid."""
        ...

    def prepare(
        self,
        images: Image.Image | Sequence[Image.Image],
        size: int,
        controls: Controls,
        weights: Sequence[float] | None = None,
    ) -> Any:
        """Per-request preprocessing of validated RGB inputs, blended by `weights` (default equal); thread-safe."""
        ...

    def generate(self, batch: Batch) -> list[Frames]:
        """One (n, H, W, 3) uint8 array per item, at whatever size the model rendered."""
        ...

    def finish(self, frames: Frames, size: int) -> list[Frames]:
        """A request's rendered frames as `size` x `size` images; thread-safe."""
        ...
