"""What a request cost in attempts: the targets tried, in order, and how often each; which one answered.

The caller owns the record and hands it to the service, so it reads what was tried on success and on
failure alike (the usage row's `attempts` and `targets_tried`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tried:
    """The attempts made on each target tried, in order; a skipped target (open circuit) is not in it."""

    attempts: dict[str, int] = field(default_factory=dict)
    # Images providers made (and billed) that the client never got: a partly made answer given up on.
    unused_images: int = 0

    @property
    def total(self) -> int:
        return sum(self.attempts.values())

    def describe(self) -> str:
        """`a:2,b:1`, as the usage row records it."""
        return ",".join(f"{name}:{count}" for name, count in self.attempts.items())


@dataclass(frozen=True)
class Served:
    """Which target answered, after how many attempts in all, and on which targets."""

    target: str
    attempts: int
    tried: Tried = field(default_factory=Tried)
