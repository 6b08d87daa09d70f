"""Running a policy's check on a batch of images: which are flagged, what the audit says, and the fail mode.

The classifiers are built once per configuration and shared by every model that names them. A check
that cannot run (ClassifierFailed, or any other failure of the classifier) passes the images under
`fail = "open"` and raises SafetyUnavailable (a 503) under `fail = "closed"`. The audit text (which
check, the classifier, the scores) goes to the log line and the usage row, never to the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from vary.errors import SafetyUnavailable
from vary.safety.classifier import Classifier, ClassifierFailed, Picture, Stage, Verdict
from vary.safety.guardrail import HttpGuardrail
from vary.safety.hugging_face import HuggingFaceClassifier
from vary.safety.open_nsfw import OpenNsfw
from vary.safety.policy import HF_PREFIX, OPEN_NSFW, SafetyPolicy

log = logging.getLogger("vary.safety")
Outcome = Literal["passed", "flagged", "failed_open", "failed_closed"]


class CheckObserver(Protocol):
    """Told of every check (vary.ops.metrics.Metrics is one)."""

    def observe_check(self, stage: str, outcome: str, seconds: float) -> None: ...


@dataclass
class Findings:
    """What a request's checks found, one note per check, for the usage row and the log line. The edge
    hands its own to the service, which fills it whether the request succeeds or fails."""

    notes: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        self.notes.append(note)

    def describe(self) -> str | None:
        return "; ".join(self.notes) or None


@dataclass(frozen=True)
class CheckResult:
    flagged: tuple[int, ...]  # the indices of the flagged images, in the batch checked
    audit: str  # for the log and the usage row only
    seconds: float


def build_classifier(policy: SafetyPolicy) -> Classifier:
    if policy.classifier == OPEN_NSFW:
        return OpenNsfw()
    if policy.classifier.startswith(HF_PREFIX):
        return HuggingFaceClassifier(policy.classifier[len(HF_PREFIX) :], flagged_labels=policy.labels)
    return HttpGuardrail(policy.classifier, timeout_seconds=policy.timeout_seconds)


class ContentChecks:
    def __init__(self, observer: CheckObserver | None = None) -> None:
        self.observer = observer
        self._classifiers: dict[tuple[str, tuple[str, ...], float], Classifier] = {}

    def classifier(self, policy: SafetyPolicy) -> Classifier:
        key = (policy.classifier, policy.labels, policy.timeout_seconds)
        if key not in self._classifiers:
            self._classifiers[key] = build_classifier(policy)
        return self._classifiers[key]

    def load(self, policies: Iterable[SafetyPolicy]) -> None:
        """Loads the classifiers the policies use (blocking): a missing package or a changed model file
        stops the server at start rather than failing requests."""
        for policy in policies:
            if policy.on:
                self.classifier(policy).load()

    async def aclose(self) -> None:
        for classifier in self._classifiers.values():
            if isinstance(classifier, HttpGuardrail):
                await classifier.aclose()

    async def check(self, policy: SafetyPolicy, stage: Stage, pictures: Sequence[Picture]) -> CheckResult:
        """The batch's flagged images; raises SafetyUnavailable when the check cannot run and fails closed."""
        classifier = self.classifier(policy)
        started = time.perf_counter()
        outcome: Outcome = "passed"
        try:
            try:
                verdicts = await classifier.classify(pictures, stage)
                if len(verdicts) != len(pictures):
                    raise ClassifierFailed(f"{len(verdicts)} verdicts for {len(pictures)} images")
            except Exception as exc:  # noqa: BLE001 - any failure of a classifier is the fail mode's to decide
                reason = str(exc) if isinstance(exc, ClassifierFailed) else f"{type(exc).__name__}: {exc}"
                audit = f"{stage} check by {classifier.name} could not run ({reason})"
                if policy.fail == "open":
                    outcome = "failed_open"
                    log.warning("%s: the images pass (fail = open)", audit)
                    return CheckResult((), f"{audit}: passed, fail open", time.perf_counter() - started)
                outcome = "failed_closed"
                log.warning("%s: the request is refused (fail = closed)", audit)
                raise SafetyUnavailable(audit) from None
            flagged = tuple(i for i, verdict in enumerate(verdicts) if verdict.score >= policy.threshold)
            outcome = "flagged" if flagged else "passed"
            audit = _audit(stage, classifier.name, policy.threshold, verdicts, flagged)
            if flagged:
                reasons = {v.reason for v in verdicts if v.reason}
                log.info("%s%s", audit, f" (reason: {'; '.join(sorted(reasons))})" if reasons else "")
            return CheckResult(flagged, audit, time.perf_counter() - started)
        finally:
            if self.observer is not None:
                self.observer.observe_check(stage, outcome, time.perf_counter() - started)


def _audit(stage: Stage, name: str, threshold: float, verdicts: Sequence[Verdict], flagged: Sequence[int]) -> str:
    if not flagged:
        top = max((v.score for v in verdicts), default=0.0)
        return f"{stage} passed {name} (highest score {top:.3f} < {threshold:g})"
    shown = ", ".join(
        f"#{i + 1} score {verdicts[i].score:.3f} labels {'/'.join(verdicts[i].labels) or '-'}" for i in flagged
    )
    return f"{stage} flagged by {name} (threshold {threshold:g}): {len(flagged)} of {len(verdicts)} images: {shown}"
