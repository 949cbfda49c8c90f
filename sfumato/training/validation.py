"""Validation retrieval during training: does the model draw the image its caption names?

A fixed, evenly spaced sample of N training examples is generated from each example's first caption
(seed = its position in the sample) and every generated image is retrieved among the N real images by
cosine similarity of a fixed feature extractor. Top-1 / top-5 go to `validation.csv` and
`validation.png` in the run folder (`TrainLog.retrieval`), so a run shows learning, not only a falling loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sfumato.training.buckets import BucketPlan
from sfumato.training.data import Dataset, load_pixels

BATCH = 16


@dataclass
class RetrievalProbe:
    prompts: list[str]
    sizes: list[tuple[int, int]]
    extractor: Any  # sfumato.evaluation.features.Extractor
    real: np.ndarray  # [N, D] features of the real images

    @classmethod
    def build(cls, count: int, extractor_spec: str, dataset: Dataset, plan: BucketPlan) -> RetrievalProbe | None:
        """The probe over `count` evenly spaced captioned examples (None when fewer than 2 exist)."""
        from sfumato.evaluation.features import load_extractor

        usable = [i for i, ex in enumerate(dataset.examples) if plan.sizes[i] is not None and any(ex.captions)]
        count = min(count, len(usable))
        if count < 2:
            return None
        picked = [usable[round(k * (len(usable) - 1) / max(count - 1, 1))] for k in range(count)]
        prompts = [next(c for c in dataset.examples[i].captions if c) for i in picked]
        sizes = [plan.sizes[i] for i in picked]
        extractor = load_extractor(extractor_spec)
        real = extractor.features([_pil(load_pixels(dataset.examples[i].path, *plan.sizes[i])) for i in picked])
        return cls(prompts, sizes, extractor, real)

    def score(self, engine, steps: int) -> dict[str, Any]:
        """Generate every prompt (batched) and retrieve it among the real images."""
        from sfumato.evaluation.metrics import retrieval_ranks, top_k_accuracy
        from sfumato.requests import GenerationRequest

        requests = [GenerationRequest(prompt=p, seed=k, steps=steps, width=w, height=h)
                    for k, (p, (w, h)) in enumerate(zip(self.prompts, self.sizes))]
        images = []
        for start in range(0, len(requests), BATCH):
            images += [r.images[0].image for r in engine.generate_many(requests[start:start + BATCH])]
        ranks = retrieval_ranks(self.extractor.features(images), self.real, list(range(len(images))))
        return {"extractor": self.extractor.name, "examples": len(images),
                "top1": top_k_accuracy(ranks, 1), "top5": top_k_accuracy(ranks, 5)}


def _pil(pixels) -> Image.Image:
    """[3, H, W] in [-1, 1] -> RGB image (exactly what the model trains on)."""
    from sfumato.pipelines.steps import to_pil

    return to_pil(((pixels + 1) / 2).clamp(0, 1)[None])[0]
