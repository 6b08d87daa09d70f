"""What every engine does: turn a batch of variation items into images of exactly the asked size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image


class GenerationCancelled(Exception):
    """Every client waiting on the batch went away; the engine stopped between steps."""


@dataclass(frozen=True)
class VariationItem:
    """One request's share of a batch: its input image, how many variations, and its seed."""

    image: Image.Image  # RGB, already validated
    n: int
    seed: int


@dataclass(frozen=True)
class Batch:
    """Items that go through one pipeline call; all share an output size."""

    items: tuple[VariationItem, ...]
    size: int
    # True once nobody is waiting for the result; engines check it between denoising steps.
    should_stop: Callable[[], bool] = field(default=lambda: False)

    @property
    def total_images(self) -> int:
        return sum(item.n for item in self.items)


@dataclass(frozen=True)
class ModelInfo:
    """What /v1/models says about a served model."""

    id: str
    owned_by: str
    description: str
    license: str


class Engine(Protocol):
    info: ModelInfo

    def warmup(self) -> None: ...

    def generate(self, batch: Batch) -> list[list[Image.Image]]:
        """One list of `item.n` images per item, each `batch.size` square."""
        ...
