"""The one small interface every content classifier has: a batch of images in, a score and labels per image out.

A classifier that cannot answer (its guardrail down, slow or answering garbage; its weights missing)
raises ClassifierFailed; the policy's `fail` mode then decides (checks.py), never the classifier.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

from vary.imaging import content_views

Stage = Literal["input", "output"]


@dataclass(eq=False)
class Picture:
    """One image to check: its PNG bytes (what a guardrail is sent, as a provider is) and its views as RGB (what
    a model-based classifier reads: one for an opaque image, three for a transparent one, `content_views`),
    decoded once, here, when the caller has not decoded them already."""

    png: bytes
    _views: tuple[Image.Image, ...] | None = field(default=None, repr=False)

    def views(self) -> tuple[Image.Image, ...]:
        if self._views is None:
            with Image.open(io.BytesIO(self.png)) as image:
                image.load()  # read now: the pixels outlive the buffer
                self._views = content_views(image)
        return self._views


def worst_view(pictures: Sequence[Picture], classify: Callable[[list[Image.Image]], list[Verdict]]) -> list[Verdict]:
    """Each picture's verdict: its views classified in one batch, the highest score of each picture's views."""
    views = [picture.views() for picture in pictures]
    verdicts = iter(classify([view for each in views for view in each]))
    return [max((next(verdicts) for _ in each), key=lambda verdict: verdict.score) for each in views]


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
