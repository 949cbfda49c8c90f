"""A detector for the world of `sfumato data scenes`, trained on its renders (their layouts are known).

CenterNet-style (Zhou et al. 2019, "Objects as Points"): a small CNN predicts, on a grid of stride 4, an objectness
heat map (a Gaussian peak at each object's centre) and, at each cell, the object's class and colour (11 named
colours); from the pooled features, the background (11 colours and 3 gradients). Peaks of the heat map (3×3 local
maxima above a threshold) are the detections, named by the class read at the peak; their number per class is the
count, their places the positions.

Augmentations mimic generated images (blur, a down-and-up resample, noise, brightness, horizontal flips), never hue,
so colours stay labels. `sfumato eval detector DATA -o detector.safetensors` trains one (minutes on a CPU).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sfumato.errors import InvalidRequest

STRIDE = 4


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SceneDetector(nn.Module):
    def __init__(self, classes: list[str], colours: list[str], backgrounds: list[str], width: int = 32):
        super().__init__()
        self.classes, self.colours, self.backgrounds = classes, colours, backgrounds
        w = width
        self.down2 = _block(3, w, 2)  # 1/2
        self.down4 = _block(w, 2 * w, 2)  # 1/4
        self.down8 = _block(2 * w, 4 * w, 2)  # 1/8
        self.context = _block(4 * w, 4 * w, 1)
        self.merge = _block(6 * w, 3 * w, 1)  # 1/4 with the 1/8 context upsampled
        self.heat = nn.Conv2d(3 * w, 1, 1)
        self.kind = nn.Conv2d(3 * w, len(classes), 1)
        self.colour = nn.Conv2d(3 * w, len(colours), 1)
        self.background = nn.Linear(4 * w, len(backgrounds))
        nn.init.constant_(self.heat.bias, -4.6)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pixels [B, 3, H, W] in [0, 1] -> objectness logits [B, 1, H/4, W/4], class logits [B, K, H/4, W/4],
        colour logits [B, 11, H/4, W/4], background logits [B, 14]."""
        x4 = self.down4(self.down2(pixels * 2 - 1))
        x8 = self.context(self.down8(x4))
        up = F.interpolate(x8, size=x4.shape[-2:], mode="nearest")
        merged = self.merge(torch.cat([x4, up], dim=1))
        return self.heat(merged), self.kind(merged), self.colour(merged), self.background(x8.mean(dim=(2, 3)))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """A pooled feature vector per image (for FID and diversity within this world)."""
        x4 = self.down4(self.down2(pixels * 2 - 1))
        return self.context(self.down8(x4)).mean(dim=(2, 3))


@dataclass(frozen=True)
class Detection:
    name: str
    x: float  # centre, pixels
    y: float
    score: float
    colour: str


@dataclass
class SceneReading:
    detections: list[Detection]
    background: str

    def of(self, name: str) -> list[Detection]:
        return [d for d in self.detections if d.name == name]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]; every image is padded (white) to a multiple of 16 of the largest size."""
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    w, h = -(-w // 16) * 16, -(-h // 16) * 16
    out = torch.ones(len(images), 3, h, w)
    for n, image in enumerate(images):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        out[n, :, :image.height, :image.width] = torch.from_numpy(array).permute(2, 0, 1)
    return out


@torch.no_grad()
def detect(model: SceneDetector, images: list[Image.Image], threshold: float = 0.3, batch: int = 64
           ) -> list[SceneReading]:
    """Detections (3×3 peaks of the objectness map above `threshold`) and the background of each image; images are
    batched by size (padding would change what the background reads)."""
    model.eval()
    readings: list[SceneReading | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.size, []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            for i, reading in zip(chunk, _read([images[i] for i in chunk], model, threshold)):
                readings[i] = reading
    return readings


def _read(chunk: list[Image.Image], model: SceneDetector, threshold: float) -> list[SceneReading]:
    heat, kind, colour, background = model(to_tensor(chunk))
    heat = heat.sigmoid()
    peaks = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > threshold)
    out = []
    for n, image in enumerate(chunk):
        found = []
        for _, y, x in peaks[n].nonzero().tolist():
            if x * STRIDE >= image.width or y * STRIDE >= image.height:
                continue
            k = int(kind[n, :, y, x].argmax())
            found.append(Detection(model.classes[k], x * STRIDE + STRIDE / 2, y * STRIDE + STRIDE / 2,
                                   float(heat[n, 0, y, x]), model.colours[int(colour[n, :, y, x].argmax())]))
        out.append(SceneReading(sorted(_suppress(found), key=lambda d: -d.score),
                                model.backgrounds[int(background[n].argmax())]))
    return out


def _suppress(found: list[Detection], radius: float = 6.0) -> list[Detection]:
    """One detection per place: of peaks of different classes closer than `radius` px, keep the strongest."""
    kept: list[Detection] = []
    for d in sorted(found, key=lambda d: -d.score):
        if all((d.x - k.x) ** 2 + (d.y - k.y) ** 2 >= radius ** 2 for k in kept):
            kept.append(d)
    return kept


# ---------------------------------------------------------------- training


def _targets(record: dict, classes: dict[str, int], colours: dict[str, int], grid: tuple[int, int], flip: bool,
             width: int):
    """A Gaussian heat map per object and, at the cell nearest its centre, its class and colour."""
    gh, gw = grid
    heat_entries, colour_entries = [], []
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                            indexing="ij")
    for obj in record["objects"]:
        x0, y0, x1, y1 = obj["box"]
        if flip:
            x0, x1 = width - x1, width - x0
        cx, cy = (x0 + x1) / 2 / STRIDE - 0.5, (y0 + y1) / 2 / STRIDE - 0.5
        sigma = max(0.7, (x1 - x0) / STRIDE / 6)
        peak = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        heat_entries.append((classes[obj["short"]], peak))
        colour_entries.append((min(gh - 1, max(0, round(cy))), min(gw - 1, max(0, round(cx))), colours[obj["colour"]]))
    return heat_entries, colour_entries


def _focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -torch.log(p) * (1 - p) ** 2 * positive
    neg = -torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - positive)
    return (pos.sum() + neg.sum()) / positive.sum().clamp(min=1)


def _augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    n = len(x)
    out = []
    for i in range(n):
        img = x[i:i + 1]
        if rng.random() < 0.4:
            k = rng.choice((3, 5))
            sigma = rng.uniform(0.5, 1.3)
            r = torch.arange(k, dtype=torch.float32) - k // 2
            g = torch.exp(-r ** 2 / (2 * sigma ** 2))
            g = (g / g.sum())
            kernel = (g[:, None] * g[None, :]).expand(3, 1, k, k)
            img = F.conv2d(F.pad(img, (k // 2,) * 4, mode="replicate"), kernel, groups=3)
        if rng.random() < 0.3:
            h, w = img.shape[-2:]
            img = F.interpolate(F.interpolate(img, scale_factor=0.5, mode="area"), size=(h, w), mode="bilinear",
                                align_corners=False)
        img = img * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        img = img + torch.randn_like(img) * rng.uniform(0, 0.05)
        out.append(img)
    return torch.cat(out).clamp(0, 1)


def load_records(data: Path, square_only: bool = True) -> list[dict]:
    path = Path(data) / "metadata.jsonl"
    if not path.exists():
        raise InvalidRequest(f"{path} not found: make the data with `sfumato data scenes {data}`")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if not square_only or (r["width"], r["height"]) == (64, 64)]


def train_detector(data: Path, steps: int = 3000, batch: int = 64, seed: int = 0, limit: int | None = None,
                   progress: Callable[[int, int, float], None] | None = None,
                   init: SceneDetector | None = None, width: int = 32) -> SceneDetector:
    """Train on the 64×64 renders of a scenes folder (from `init`'s weights when given: a further run)."""
    from sfumato.training.scene_vocab import BACKGROUNDS, COLOURS, GRADIENTS, vocabulary

    torch.manual_seed(seed)
    rng = random.Random(seed)
    records = load_records(data)[:limit]
    classes = [o.short for o in vocabulary()]
    model = init or SceneDetector(classes, list(COLOURS), BACKGROUNDS + list(GRADIENTS), width)
    if model.classes != classes:
        raise InvalidRequest("the detector to continue was trained on another vocabulary")
    class_index = {c: i for i, c in enumerate(classes)}
    colour_index = {c: i for i, c in enumerate(model.colours)}
    background_index = {b: i for i, b in enumerate(model.backgrounds)}
    pixels = torch.stack([to_tensor([Image.open(Path(data) / r["file_name"])])[0] for r in records])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    grid = (64 // STRIDE, 64 // STRIDE)
    model.train()
    for step in range(steps):
        index = [rng.randrange(len(records)) for _ in range(batch)]
        flips = [rng.random() < 0.5 for _ in index]
        x = pixels[index]
        x = torch.stack([xi.flip(-1) if f else xi for xi, f in zip(x, flips)])
        x = _augment(x, rng)
        heat_t = torch.zeros(batch, 1, *grid)
        kind_t = torch.full((batch, *grid), -100, dtype=torch.long)
        colour_t = torch.full((batch, *grid), -100, dtype=torch.long)
        background_t = torch.tensor([background_index[records[i]["background"]] for i in index])
        for n, (i, f) in enumerate(zip(index, flips)):
            heats, cols = _targets(records[i], class_index, colour_index, grid, f, 64)
            for _, peak in heats:
                heat_t[n, 0] = torch.maximum(heat_t[n, 0], peak)
            for (k, _), (y, x_, c) in zip(heats, cols):
                heat_t[n, 0, y, x_] = 1.0  # the cell nearest each centre is the exact peak
                kind_t[n, y, x_] = k
                colour_t[n, y, x_] = c
        with torch.autocast("cpu", dtype=torch.bfloat16):  # AMX/AVX512-BF16 CPUs train ~2x faster
            heat, kind, colour, background = (t.float() for t in model(x))
        loss = (_focal(heat, heat_t) + F.cross_entropy(kind, kind_t, ignore_index=-100)
                + F.cross_entropy(colour, colour_t, ignore_index=-100) + 0.5 * F.cross_entropy(background, background_t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress:
            progress(step + 1, steps, float(loss.detach()))
    return model.eval()


def save_detector(model: SceneDetector, path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"classes": json.dumps(model.classes), "colours": json.dumps(model.colours),
            "width": str(model.heat.in_channels // 3),
            "backgrounds": json.dumps(model.backgrounds), "kind": "sfumato-scene-detector"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def load_detector(path: Path) -> SceneDetector:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InvalidRequest(f"detector {path} not found: train one with `sfumato eval detector DATA -o {path}`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != "sfumato-scene-detector":
        raise InvalidRequest(f"{path} is not a scene detector")
    model = SceneDetector(json.loads(meta["classes"]), json.loads(meta["colours"]), json.loads(meta["backgrounds"]),
                          int(meta.get("width", 32)))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def accuracy(model: SceneDetector, data: Path, records: list[dict], threshold: float = 0.3) -> dict[str, float]:
    """Per-object recall (class found within 6 px of the centre), colour and background accuracy, exact counts."""
    images = [Image.open(Path(data) / r["file_name"]).convert("RGB") for r in records]
    readings = detect(model, images, threshold)
    found = colour_ok = total = background_ok = count_ok = 0
    for r, reading in zip(records, readings):
        background_ok += reading.background == r["background"]
        names = [o["short"] for o in r["objects"]]
        count_ok += all(len(reading.of(n)) == names.count(n) for n in set(names))
        for obj in r["objects"]:
            x0, y0, x1, y1 = obj["box"]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            near = [d for d in reading.of(obj["short"]) if math.hypot(d.x - cx, d.y - cy) <= 6]
            total += 1
            found += bool(near)
            colour_ok += bool(near) and near[0].colour == obj["colour"]
    n = max(1, len(records))
    return {"object recall": found / max(1, total), "object colour": colour_ok / max(1, total),
            "background": background_ok / n, "exact counts": count_ok / n}
