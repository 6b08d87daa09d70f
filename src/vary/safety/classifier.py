"""The one small interface every content classifier has: a batch of images in, a score and labels per image out.

A classifier that cannot answer (its guardrail down, slow or answering garbage; its weights missing)
raises ClassifierFailed; the policy's `fail` mode then decides (checks.py), never the classifier.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

from vary.imaging import to_rgb

Stage = Literal["input", "output"]


@dataclass(eq=False)
class Picture:
    """One image to check: its PNG bytes (what a guardrail is sent) and its RGB pixels (what a model reads),
    decoded once, here, when the caller has not decoded them already."""

    png: bytes
    _rgb: Image.Image | None = field(default=None, repr=False)

    def rgb(self) -> Image.Image:
        if self._rgb is None:
            image = Image.open(io.BytesIO(self.png))
            image.load()  # read now: the pixels outlive the buffer
            self._rgb = to_rgb(image)
        return self._rgb


@dataclass(frozen=True)
class Verdict:
    score: float  # 0 to 1: how likely the image breaks the policy
    labels: tuple[str, ...] = ()  # what the classifier saw, for the audit trail
    reason: str | None = None  # a guardrail's blocked_reason: for the server's log only


class ClassifierFailed(Exception):
    """The classifier gave no usable answer; the message is for the server's log only."""


class Classifier(Protocol):
    @property
    def name(self) -> str:
        """What the log and the usage row call it: never shown to a client."""
        ...

    def load(self) -> None:
        """Loads what it needs, blocking (the server calls it at start); raises when it never could work."""
        ...

    async def classify(self, pictures: Sequence[Picture], stage: Stage) -> list[Verdict]:
        """One verdict per picture, in order, for the whole batch in one go; raises ClassifierFailed."""
        ...
