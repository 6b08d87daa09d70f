"""A request's optional controls, their bounds, and the controls resolved against a model's defaults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vary.errors import ControlInvalid, RequestInvalid

# The bounds, declared once: the form, the settings, the catalogue and the OpenAPI document use these.
MAX_SEED = 2**63 - 1
MAX_GUIDANCE_SCALE = 50.0
# At most half the 1000 training timesteps, which DDPM-style schedulers need to space the steps.
MAX_STEPS = 500
# Input images one request may blend (Nova Canvas takes the same 1 to 5).
MAX_IMAGES = 5


@dataclass(frozen=True)
class RequestedControls:
    """The optional control fields of a request; None leaves the model's own default."""

    seed: int | None = None
    strength: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None

    def given(self) -> dict[str, int | float]:
        """Only the controls the client gave."""
        fields = {"seed": self.seed, "strength": self.strength, "steps": self.steps}
        fields["guidance_scale"] = self.guidance_scale
        return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True)
class Controls:
    """A request's controls resolved against its model's defaults. Only equal controls share a batch."""

    steps: int
    guidance_scale: float
    # 1.0: a pure image-embedding variation. Below 1: img2img from the input, keeping its composition.
    strength: float = 1.0


@dataclass(frozen=True)
class Capabilities:
    """What a model does with a request's controls, as the model declares it (never found out by trying).

    A control a model lacks is ignored where that changes nothing the client relies on (a seed,
    steps, guidance), and refused where the answer would not be what was asked: strength below 1
    without an img2img path, more images than it takes, unequal weights where it blends equally.
    """

    seed: bool = True  # the same seed and request give the same images
    steps: bool = True
    guidance_scale: bool = True
    img2img: bool = True  # strength below 1 starts from the input, keeping its composition
    max_images: int = MAX_IMAGES  # input images it blends
    image_weights: bool = True  # unequal weights; without them the inputs are blended equally

    def refuse_strength(self, strength: float, model: str) -> None:
        if strength < 1 and not self.img2img:
            raise ControlInvalid(
                "strength", f"The model '{model}' has no img2img path, so 'strength' must be 1 (the default)."
            )

    def refuse(self, controls: RequestedControls, images: int, weights: Sequence[float], model: str) -> None:
        """Raises what the model cannot do of this request, before any work is done for it."""
        if controls.strength is not None:
            self.refuse_strength(controls.strength, model)
        if images > self.max_images:
            takes = "one input image" if self.max_images == 1 else f"at most {self.max_images} input images"
            raise RequestInvalid(f"The model '{model}' takes {takes}; {images} were given.", param="image")
        if weights and len(set(weights)) > 1 and not self.image_weights:
            raise RequestInvalid(
                f"The model '{model}' blends its input images with equal weight; leave out 'image_weights'.",
                param="image_weights",
            )

    def shared(self, other: Capabilities) -> Capabilities:
        """What both honour: a route's, whichever of its targets answers."""
        return Capabilities(
            seed=self.seed and other.seed,
            steps=self.steps and other.steps,
            guidance_scale=self.guidance_scale and other.guidance_scale,
            img2img=self.img2img and other.img2img,
            max_images=min(self.max_images, other.max_images),
            image_weights=self.image_weights and other.image_weights,
        )
