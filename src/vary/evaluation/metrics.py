"""The figures of a run, from unit-length CLIP embeddings and measured latencies; pure functions.

- fidelity (CLIP-I): mean cosine similarity between each variation's image embedding and its input's;
- text alignment (CLIP-T): CLIPScore (Hessel et al. 2021), 2.5 x max(cosine, 0) between a variation's
  image embedding and its input's caption, the score the IP-Adapter paper reports;
- diversity: mean pairwise (1 - cosine) among the variations of one input, averaged over inputs;
- speed: images per second of generation time, and the median request latency.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

import torch

CLIP_SCORE_WEIGHT = 2.5  # Hessel et al.'s w: rescales ViT cosines (about 0 to 0.4) towards 0 to 1


def fidelity(variations: torch.Tensor, source: torch.Tensor) -> list[float]:
    """Cosine of each of one input's variations (n, d) to the input's embedding (d,)."""
    return (variations @ source).tolist()


def clip_score(variations: torch.Tensor, caption: torch.Tensor) -> list[float]:
    """CLIPScore of each variation (n, d) against one caption's embedding (d,)."""
    return (CLIP_SCORE_WEIGHT * (variations @ caption).clamp(min=0)).tolist()


def diversity(variations: torch.Tensor) -> float | None:
    """Mean pairwise (1 - cosine) among one input's variations; None for fewer than two."""
    pairs = list(itertools.combinations(range(variations.shape[0]), 2))
    if not pairs:
        return None
    return sum(1.0 - float(variations[i] @ variations[j]) for i, j in pairs) / len(pairs)


def mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def p50_ms(latencies_s: Sequence[float]) -> float | None:
    return statistics.median(latencies_s) * 1000 if latencies_s else None


def images_per_second(images: int, seconds: float) -> float | None:
    return images / seconds if images and seconds > 0 else None
