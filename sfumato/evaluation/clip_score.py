"""CLIP score (Hessel et al. 2021, as in torchmetrics): 100 · max(cos(image, text), 0), averaged.

Any local transformers `CLIPModel` folder works (with its tokenizer and, if present, its image
processor config); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sfumato.errors import InvalidRequest, ModelNotFound

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """Scores (image, caption) pairs with one loaded CLIP model."""

    def __init__(self, folder: str | Path):
        import torch
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelNotFound(f"{folder} is not a CLIP model folder (no config.json)")
        self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.size = int(self.model.config.vision_config.image_size)
        self.name = f"clip:{folder.name}"

    def _pixels(self, images: list[Image.Image]):
        import torch

        arrays = []
        for im in images:  # resize the short side, centre-crop, normalise (CLIP's preprocessing)
            im = im.convert("RGB")
            scale = self.size / min(im.size)
            im = im.resize((max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))),
                           Image.Resampling.BICUBIC)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arrays.append((np.asarray(im, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD)
        return torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2)

    def scores(self, images: list[Image.Image], captions: list[str]) -> np.ndarray:
        """One score per pair, in [0, 100]."""
        return 100 * np.clip(self.similarities(images, captions), 0, None)

    def similarities(self, images: list[Image.Image], captions: list[str], batch_size: int = 32) -> np.ndarray:
        """Cosine similarity of each image's and caption's CLIP embeddings."""
        import torch

        if len(images) != len(captions):
            raise InvalidRequest(f"{len(images)} images but {len(captions)} captions")
        if not images:
            raise InvalidRequest("no images to score")
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                tokens = self.tokenizer(captions[i:i + batch_size], padding=True, truncation=True,
                                        max_length=self.model.config.text_config.max_position_embeddings,
                                        return_tensors="pt")
                image_emb = self.model.get_image_features(pixel_values=self._pixels(images[i:i + batch_size]))
                text_emb = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                        attention_mask=tokens["attention_mask"])
                image_emb = _as_tensor(image_emb)
                text_emb = _as_tensor(text_emb)
                out.append(torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1).numpy())
        return np.concatenate(out)


def _as_tensor(output):
    """transformers 5 may return a model output with the projected embeddings in `pooler_output`."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output


def clip_score(folder: str | Path, images: list[Image.Image], captions: list[str]) -> float:
    return float(ClipScorer(folder).scores(images, captions).mean())
