"""A model's content policy: which images are checked, by what, and what a flagged one means.

Read from a `[models.safety]` table (or a route's), over the server's default (VARY_SAFETY_*), so a
table may name only what differs. Off unless `check` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from vary.settings import Settings

Check = Literal["off", "input", "output", "both"]
CHECKS = ("off", "input", "output", "both")
ON_FLAGGED_OUTPUT = ("refuse", "regenerate")
FAIL_MODES = ("open", "closed")
OPEN_NSFW = "open-nsfw"
HF_PREFIX = "hf:"
# The most regenerations a policy may ask for: each one is a whole model call.
MAX_REGENERATIONS = 10


@dataclass(frozen=True)
class SafetyPolicy:
    check: Check = "off"
    classifier: str = OPEN_NSFW  # "open-nsfw", "hf:ID_OR_PATH", or an http(s) URL of a guardrail
    threshold: float = 0.8  # flagged when the score is at least this
    on_flagged_output: Literal["refuse", "regenerate"] = "refuse"
    max_regenerations: int = 2
    fail: Literal["open", "closed"] = "closed"  # a classifier that cannot answer: pass, or 503
    labels: tuple[str, ...] = ("nsfw",)  # an hf: classifier's labels that count as flagged
    timeout_seconds: float = 5.0  # one guardrail call

    @property
    def checks_input(self) -> bool:
        return self.check in ("input", "both")

    @property
    def checks_output(self) -> bool:
        return self.check in ("output", "both")

    @property
    def on(self) -> bool:
        return self.check != "off"

    @classmethod
    def of_settings(cls, settings: Settings) -> SafetyPolicy:
        """The server's default (VARY_SAFETY_*), which every model's table overrides."""
        labels = tuple(label.strip() for label in settings.safety_labels.split(",") if label.strip())
        return cls(
            check=settings.safety_check,
            classifier=settings.safety_classifier,
            threshold=settings.safety_threshold,
            on_flagged_output=settings.safety_on_flagged_output,
            max_regenerations=settings.safety_max_regenerations,
            fail=settings.safety_fail,
            labels=labels or ("nsfw",),
            timeout_seconds=settings.safety_timeout_seconds,
        ).checked()

    def merged(self, table: Mapping[str, Any]) -> SafetyPolicy:
        """This policy with a `[models.safety]` table's keys over it; ValueError names a bad key or value."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in [models.safety]; known: {', '.join(sorted(known))}")
        changes = dict(table)
        if "labels" in changes:
            labels = changes["labels"]
            if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
                raise ValueError("[models.safety] labels must be a list of label names")
            changes["labels"] = tuple(labels)
        return replace(self, **changes).checked()

    def checked(self) -> SafetyPolicy:
        if self.check not in CHECKS:
            raise ValueError(f"[models.safety] check must be one of {', '.join(CHECKS)}, not {self.check!r}")
        if not isinstance(self.classifier, str) or not _known_classifier(self.classifier):
            raise ValueError(
                f'[models.safety] classifier must be "{OPEN_NSFW}", "hf:ID_OR_PATH" or an http(s) URL, '
                f"not {self.classifier!r}"
            )
        if not _number(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError("[models.safety] threshold must be a number from 0 to 1")
        if self.on_flagged_output not in ON_FLAGGED_OUTPUT:
            raise ValueError('[models.safety] on_flagged_output must be "refuse" or "regenerate"')
        if isinstance(self.max_regenerations, bool) or not isinstance(self.max_regenerations, int):
            raise ValueError("[models.safety] max_regenerations must be a whole number")
        if not 0 <= self.max_regenerations <= MAX_REGENERATIONS:
            raise ValueError(f"[models.safety] max_regenerations must be from 0 to {MAX_REGENERATIONS}")
        if self.fail not in FAIL_MODES:
            raise ValueError('[models.safety] fail must be "open" or "closed"')
        if not _number(self.timeout_seconds) or not self.timeout_seconds > 0:
            raise ValueError("[models.safety] timeout_seconds must be a number of seconds above 0")
        return replace(self, threshold=float(self.threshold), timeout_seconds=float(self.timeout_seconds))


# Every check off: what a model without a policy, and a key the operator trusts, gets.
NO_CHECKS = SafetyPolicy()


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _known_classifier(spec: str) -> bool:
    if spec == OPEN_NSFW:
        return True
    if spec.startswith(HF_PREFIX):
        return len(spec) > len(HF_PREFIX)
    return spec.startswith(("http://", "https://")) and len(spec) > len("https://")
