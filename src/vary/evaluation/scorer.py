"""The CLIP model that scores variations, loaded by Hub id or path, or built at toy size for tests.

The IP-Adapter paper scores with CLIP ViT-L/14 (`openai/clip-vit-large-patch14`). `tiny-random`
builds a CLIPModel of the same architecture family (ViT with 14-pixel patches at 224 px, a causal
text transformer) with seeded random weights: its scores mean nothing, but every step runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig
from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # the torchvision-free processor

from vary.engines.diffusion import clip_image_processor, pick_device

TINY_SCORER = "tiny-random"
DEFAULT_SCORER = "openai/clip-vit-large-patch14"
BATCH = 16  # images per encoder call


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
        source = Path(spec).expanduser() if Path(spec).expanduser().is_dir() else spec
        model = CLIPModel.from_pretrained(source, dtype=torch.float32)
        return cls(
            model,
            CLIPImageProcessor.from_pretrained(source),
            CLIPTokenizer.from_pretrained(source),
            name=spec,
            device=placed,
        )

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
