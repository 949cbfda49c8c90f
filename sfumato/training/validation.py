"""Validation retrieval during training: does the model draw the image its caption names?

A fixed, evenly spaced sample of N training examples is generated from each example's first caption
(seed = its position in the sample) and every generated image is retrieved among the N real images by
cosine similarity of a fixed feature extractor. Top-1 / top-5 go to `validation.csv` and
`validation.png` in the run folder, so a run shows learning, not only a falling loss.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sfumato.training.buckets import BucketPlan
from sfumato.training.data import Dataset, load_pixels

HEADER = ["step", "extractor", "examples", "top1", "top5"]
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
    array = ((pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def record(run_dir: Path, step: int, scores: dict[str, Any]) -> Path:
    """Append a row to `validation.csv` (rows after `step` from an earlier attempt are dropped) and redraw the plot."""
    path = run_dir / "validation.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) < step]
    rows.append([step, scores["extractor"], scores["examples"], f"{scores['top1']:.4f}", f"{scores['top5']:.4f}"])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return plot(run_dir, rows)


def plot(run_dir: Path, rows: list[list]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r[0]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [100 * float(r[3]) for r in rows], marker="o", color="#c0392b", label="top-1")
    ax.plot(steps, [100 * float(r[4]) for r in rows], marker="o", color="#2471a3", label="top-5")
    ax.set_xlabel("step")
    ax.set_ylabel(f"retrieval among {rows[-1][2]} (%)")
    ax.set_title(f"validation retrieval ({rows[-1][1]})")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "validation.png"
    fig.savefig(path)
    plt.close(fig)
    return path
