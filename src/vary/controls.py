"""A request's optional controls, their bounds, and the controls resolved against a model's defaults."""

from __future__ import annotations

from dataclasses import dataclass

# The bounds, declared once: the form, the settings, the catalogue and the OpenAPI document use these.
MAX_SEED = 2**63 - 1
MAX_GUIDANCE_SCALE = 50.0
# At most half the 1000 training timesteps, which DDPM-style schedulers need to space the steps.
MAX_STEPS = 500


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
