"""Any Hugging Face image-classification model as a classifier: `classifier = "hf:ID_OR_PATH"`.

Loaded with transformers' Auto classes (a Hub id is fetched like the engines' weights; a path is read
as it is). The score is the probability of the labels the policy names as flagged (`labels`, e.g.
["nsfw"] for Falconsai/nsfw_image_detection), summed; the labels kept for the audit are the top one.
The image processor is the PIL one (`use_fast=False`): it needs no torchvision, in every transformers 5.x.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from vary.safety.classifier import ClassifierFailed, Picture, Stage, Verdict, worst_view


class HuggingFaceClassifier:
    def __init__(self, source: str, *, flagged_labels: Sequence[str]) -> None:
        self.source = source
        self.flagged_labels = tuple(flagged_labels)
        self._model: Any = None
        self._processor: Any = None
        self._flagged_ids: list[int] = []
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"hf:{self.source}"

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoImageProcessor, AutoModelForImageClassification

            try:
                model = AutoModelForImageClassification.from_pretrained(self.source).eval()
                processor = AutoImageProcessor.from_pretrained(self.source, use_fast=False)
            except (OSError, ValueError) as exc:
                raise ClassifierFailed(f"cannot load the classifier {self.source}: {exc}") from None
            label2id = {str(label).lower(): int(index) for label, index in model.config.label2id.items()}
            missing = [label for label in self.flagged_labels if label.lower() not in label2id]
            if missing:
                raise ClassifierFailed(
                    f"the classifier {self.source} has no label {missing[0]!r}; its labels: {', '.join(label2id)}"
                )
            self._flagged_ids = [label2id[label.lower()] for label in self.flagged_labels]
            self._model, self._processor = model, processor

    async def classify(self, pictures: Sequence[Picture], stage: Stage) -> list[Verdict]:
        return await run_in_threadpool(self.scores, pictures)

    def scores(self, pictures: Sequence[Picture]) -> list[Verdict]:
        """Blocking: the whole batch (every view of every picture) in one forward pass."""
        self.load()
        if not pictures:
            return []
        return worst_view(pictures, self._scores)

    def _scores(self, images: list[Any]) -> list[Verdict]:
        import torch

        with self._lock, torch.inference_mode():
            inputs = self._processor(images=images, return_tensors="pt")
            probabilities = self._model(**inputs).logits.float().softmax(-1)
        id2label = self._model.config.id2label
        verdicts = []
        for row in probabilities:
            score = float(row[self._flagged_ids].sum().clamp(0.0, 1.0))
            verdicts.append(Verdict(score, (str(id2label[int(row.argmax())]),)))
        return verdicts
