"""A small CNN trained to tell apart the images of a labelled reference set, used as a feature extractor.

For in-domain adherence (e.g. the 1,870 base emoji), generic ImageNet-style features confuse
look-alikes (yellow faces); a classifier trained on the references themselves, with augmentations
that mimic generation (shifts, scale, blur, noise, colour jitter), separates them. Its 128-d pooled
features are compared by cosine similarity like any extractor's. Training is seeded and takes a few
minutes on a CPU; `--extractor classifier:PATH.safetensors` uses a saved one.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sfumato.evaluation.images import unit_tensor


class ReferenceClassifier(nn.Module):
    def __init__(self, classes: int, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, width), block(width, width * 2), block(width * 2, width * 4))
        self.head = nn.Linear(width * 4, classes)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels * 2 - 1).mean(dim=(2, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.features(pixels), 0.2, self.training))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shifts, scale, blur, noise and colour jitter: what separates a generated image from its reference."""
    n, _, h, w = x.shape

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    scale = 0.85 + 0.3 * rand(n)
    shift = (rand(n, 2) - 0.5) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / scale, 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    blur = rand(n, 1, 1, 1) < 0.4
    x = torch.where(blur, F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1), x)
    contrast = 0.8 + 0.4 * rand(n, 1, 1, 1)
    brightness = (rand(n, 1, 1, 1) - 0.5) * 0.2
    tint = 1 + (rand(n, 3, 1, 1) - 0.5) * 0.1
    x = (x - 0.5) * contrast + 0.5 + brightness
    x = x * tint + torch.randn(x.shape, generator=generator) * 0.03 * rand(n, 1, 1, 1)
    return x.clamp(0, 1)


def train_classifier(images: list[Image.Image], size: int = 32, epochs: int = 40, seed: int = 0,
                     progress: Callable[[int, int, float], None] | None = None) -> ReferenceClassifier:
    """Train to recognise image i as class i (one class per reference image)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = unit_tensor(images, size)
    model = ReferenceClassifier(len(images))
    batch = 128
    steps = epochs * math.ceil(len(images) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch):
            index = order[start:start + batch]
            loss = F.cross_entropy(model(augment(data[index], generator)), index, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        if progress:
            progress(epoch + 1, epochs, float(loss))
    return model.eval()


def save_classifier(model: ReferenceClassifier, path: Path, size: int) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"classes": str(model.head.out_features), "size": str(size)})
    return path


def load_classifier(path: Path) -> tuple[ReferenceClassifier, int]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    model = ReferenceClassifier(int(meta["classes"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), int(meta.get("size", 32))


def classifier_runner(path: Path):
    model, size = load_classifier(path)

    @torch.no_grad()
    def run(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        x = unit_tensor(images, size)
        feats = model.features(x)
        return feats.numpy(), model.head(feats).numpy()

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
    return run, f"reference-classifier-{digest}"
