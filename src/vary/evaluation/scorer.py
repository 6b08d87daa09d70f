"""The CLIP model that scores variations, loaded by Hub id or path, or built at toy size for tests.

The IP-Adapter paper scores with CLIP ViT-L/14 (`openai/clip-vit-large-patch14`). `tiny-random`
builds a CLIPModel of the same architecture family (ViT with 14-pixel patches at 224 px, a causal
text transformer) with seeded random weights: its scores mean nothing, but every step runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor

from vary.engines.diffusion import clip_image_processor, pick_device
from vary.engines.weights import HUB_TIMEOUT_SECONDS, hub_trouble

TINY_SCORER = "tiny-random"
DEFAULT_SCORER = "openai/clip-vit-large-patch14"
BATCH = 16  # images per encoder call


class ScorerUnavailable(Exception):
    """The scorer's files are neither on disk nor to be had from the Hub: one line, with the ways out."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(
            f"the scorer {spec} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}. "
            f"Get it where the Hub is reachable (`hf download {spec}`, then copy the cache here), "
            "or pass --scorer DIR for a local copy, or --scorer tiny-random for a smoke run (its scores mean nothing)"
        )


class ClipScorer:
    """Unit-length CLIP embeddings of images and texts, in float32."""

    def __init__(
        self, model: CLIPModel, processor: CLIPImageProcessor, tokenizer: CLIPTokenizer, *, name: str, device: str
    ) -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)

    @classmethod
    def load(cls, spec: str, *, device: str | None = None, seed: int = 0) -> ClipScorer:
        """`tiny-random`, a Hub id (from the Hugging Face cache, else downloaded) or a local directory."""
        placed = str(pick_device(device))
        if spec == TINY_SCORER:
            model, processor, tokenizer = build_tiny_scorer(seed)
            return cls(model, processor, tokenizer, name=spec, device=placed)
        folder = Path(spec).expanduser()
        if folder.is_dir():
            return cls(*_from_pretrained(folder), name=spec, device=placed)
        try:  # the cache first: no Hub call when the files are there
            return cls(*_from_pretrained(spec, local_files_only=True), name=spec, device=placed)
        except OSError:
            pass
        # One bounded call says whether the Hub can help, before transformers' own retries (half a minute).
        if constants.HF_HUB_OFFLINE:
            raise ScorerUnavailable(spec, "HF_HUB_OFFLINE is set, so the Hub is not asked")
        try:
            HfApi().model_info(spec, timeout=HUB_TIMEOUT_SECONDS)
        except Exception as exc:  # the Hub's many errors, said in a few words (never its traceback)
            raise ScorerUnavailable(spec, hub_trouble(exc)) from exc
        print(f"vary eval: downloading the scorer {spec} from {constants.ENDPOINT} (once)", file=sys.stderr)
        try:
            return cls(*_from_pretrained(spec), name=spec, device=placed)
        except OSError as exc:
            raise ScorerUnavailable(spec, hub_trouble(exc)) from exc

    def save_pretrained(self, path: Path) -> None:
        """Model, image processor and tokenizer in one directory, the layout `load` reads."""
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(len(images), d) unit vectors, on the CPU."""
        rows = []
        for start in range(0, len(images), BATCH):
            pixels = self.processor([i.convert("RGB") for i in images[start : start + BATCH]], return_tensors="pt")
            features = self.model.get_image_features(pixel_values=pixels.pixel_values.to(self.device))
            rows.append(_unit(_tensor(features)).cpu())
        return torch.cat(rows) if rows else torch.empty(0, self.model.config.projection_dim)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), d) unit vectors, on the CPU; texts longer than CLIP's 77 tokens are cut."""
        rows = []
        for start in range(0, len(texts), BATCH):
            tokens = self.tokenizer(
                list(texts[start : start + BATCH]), padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            features = self.model.get_text_features(
                input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
            )
            rows.append(_unit(_tensor(features)).cpu())
        return torch.cat(rows) if rows else torch.empty(0, self.model.config.projection_dim)


def _from_pretrained(
    source: str | Path, *, local_files_only: bool = False
) -> tuple[CLIPModel, CLIPImageProcessor, CLIPTokenizer]:
    return (
        CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=local_files_only),
        CLIPImageProcessor.from_pretrained(source, local_files_only=local_files_only),
        CLIPTokenizer.from_pretrained(source, local_files_only=local_files_only),
    )


def _tensor(features: object) -> torch.Tensor:
    """get_*_features returns a tensor, or (newer transformers) an output whose pooled embedding it is."""
    if isinstance(features, torch.Tensor):
        return features
    pooled = getattr(features, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"unexpected CLIP features: {type(features).__name__}")
    return pooled


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows.float(), dim=-1)


def build_tiny_scorer(seed: int = 0) -> tuple[CLIPModel, CLIPImageProcessor, CLIPTokenizer]:
    """ViT-L/14's shape of input (224 px, 14-pixel patches) at toy width and depth, seeded random weights."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=224,
            patch_size=14,
        ),
        projection_dim=32,
    )
    return CLIPModel(config), clip_image_processor(224), CLIPTokenizer(model_max_length=77)
