"""`sfumato eval compositional`: GenEval's categories on the world of `sfumato data scenes`, plus diversity.

GenEval (Ghosh et al. 2023) scores a text-to-image model with an object detector on prompts of six kinds; here the
detector is `scene_detector` (trained on the renders, whose layouts are known) and the prompts come from the
held-out split (`training.scenes.held_out_*`): object pairs, colour-object and count-object pairs the model never
saw in training. Categories:

| category | prompt | correct when |
|---|---|---|
| single object | "a dog" | a dog is detected |
| two objects | "a dog and a kite" (held-out pair) | both are detected |
| counting | "three kites" (held-out count) | exactly three kites are detected |
| object colour | "a blue dog" (held-out colour) | a dog is detected, coloured blue |
| background colour | "a dog on a yellow background" | the background reads yellow |
| position | "a dog to the left of a kite" (held-out pair) | both detected, centres > 4 px apart that way |
| colour attribution | "a blue dog and a red kite" (held-out pair) | both detected with their colours |

Diversity: for single-object prompts × 8 seeds, the mean pairwise RMSE of the images and how many of the 8 are
visibly distinct (greedily: an image counts if its RMSE to every image kept before exceeds `DISTINCT`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from sfumato.evaluation.scene_detector import SceneDetector, SceneReading, detect
from sfumato.requests import GenerationRequest

CATEGORIES = ("single object", "two objects", "counting", "object colour", "background colour", "position",
              "colour attribution")
DISTINCT = 0.08  # RMSE in [0, 1] at 32 px above which two images are visibly different
MARGIN = 4.0  # px between centres for a relation to hold


@dataclass
class Case:
    category: str
    prompt: str
    objects: list[str]  # short names, in prompt order
    colours: list[str | None] = field(default_factory=list)
    count: int = 1
    relation: str | None = None
    background: str | None = None

    def correct(self, reading: SceneReading) -> bool:
        found = [reading.of(name) for name in self.objects]
        if self.category == "counting":
            return len(found[0]) == self.count
        if self.category == "background colour":
            return reading.background == self.background
        if not all(found):
            return False
        if self.category in ("object colour", "colour attribution"):
            return all(any(d.colour == c for d in f) for f, c in zip(found, self.colours))
        if self.category == "position":
            a, b = found[0][0], found[1][0]
            dx, dy = b.x - a.x, b.y - a.y
            return {"to the left of": dx > MARGIN, "to the right of": -dx > MARGIN, "above": dy > MARGIN,
                    "below": -dy > MARGIN}[self.relation]
        return True


def cases(per_category: int = 24, seed: int = 0) -> list[Case]:
    """`per_category` prompts of each category, drawn (seeded) from the held-out split."""
    from sfumato.training.scene_vocab import BACKGROUNDS, COLOURS, article, vocabulary
    from sfumato.training.scenes import held_out_colour, held_out_count, held_out_pair, noun_phrase

    rng = random.Random(seed)
    objects = vocabulary()
    by_name = {o.short: o for o in objects}
    tintable = [o for o in objects if o.tintable]
    names = [o.short for o in objects]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if held_out_pair(a, b)]
    colour_pairs = [(c, o.short) for c in COLOURS for o in tintable if held_out_colour(c, o.short)]
    counts = [(n, o.short) for n in (2, 3, 4) for o in objects if held_out_count(n, o.short)]
    out: list[Case] = []

    def np_(name: str, colour: str | None = None, count: int = 1) -> str:
        return noun_phrase(by_name[name], colour, count)

    for name in rng.sample(names, per_category):
        out.append(Case("single object", np_(name), [name]))
    for a, b in rng.sample(pairs, per_category):
        a, b = rng.sample((a, b), 2)
        out.append(Case("two objects", f"{np_(a)} and {np_(b)}", [a, b]))
    for n, name in rng.sample(counts, per_category):
        out.append(Case("counting", np_(name, count=n), [name], count=n))
    for colour, name in rng.sample(colour_pairs, per_category):
        out.append(Case("object colour", np_(name, colour), [name], [colour]))
    for name in rng.sample(names, per_category):
        background = rng.choice(BACKGROUNDS[1:])
        out.append(Case("background colour", f"{np_(name)} on {article(background)} {background} background", [name],
                        background=background))
    for a, b in rng.sample(pairs, per_category):
        relation = rng.choice(("to the left of", "to the right of", "above", "below"))
        out.append(Case("position", f"{np_(a)} {relation} {np_(b)}", [a, b], relation=relation))
    tint_pairs = [(a, b) for a, b in pairs if by_name[a].tintable and by_name[b].tintable]
    for a, b in rng.sample(tint_pairs, per_category):
        ca, cb = rng.sample([c for c in COLOURS if c not in ("white",)], 2)
        out.append(Case("colour attribution", f"{np_(a, ca)} and {np_(b, cb)}", [a, b], [ca, cb]))
    return out


def score(detector: SceneDetector, case_list: list[Case], images: list[Image.Image]) -> dict:
    readings = detect(detector, images)
    per: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for case, reading in zip(case_list, readings):
        per[case.category].append(case.correct(reading))
    table = {c: float(np.mean(v)) for c, v in per.items() if v}
    table["overall"] = float(np.mean(list(table.values())))
    return {"categories": table, "correct": [case.correct(r) for case, r in zip(case_list, readings)]}


def _small(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def diversity(images: list[Image.Image]) -> dict[str, float]:
    """Mean pairwise RMSE and the number of visibly distinct images in one prompt's set."""
    arrays = [_small(i) for i in images]
    distances = [float(np.sqrt(((a - b) ** 2).mean())) for i, a in enumerate(arrays) for b in arrays[i + 1:]]
    kept: list[np.ndarray] = []
    for a in arrays:
        if all(np.sqrt(((a - k) ** 2).mean()) > DISTINCT for k in kept):
            kept.append(a)
    return {"mean pairwise rmse": float(np.mean(distances)) if distances else 0.0, "distinct": len(kept)}


def evaluate(engine, detector: SceneDetector, model: str | None = None, per_category: int = 24, seed: int = 0,
             diversity_prompts: int = 12, seeds: int = 8, settings: dict | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate every case (seed = its index) at the model's defaults (or `settings`: request fields such as a
    few-step preset), score it; then the diversity sets."""
    settings = {"model": model, **(settings or {})}
    case_list = cases(per_category, seed)
    images: list[Image.Image] = []
    total = len(case_list) + diversity_prompts * seeds
    batch = 16
    for start in range(0, len(case_list), batch):
        chunk = case_list[start:start + batch]
        requests = [GenerationRequest(prompt=c.prompt, seed=seed * 100_000 + start + i, **settings)
                    for i, c in enumerate(chunk)]
        images.extend(r.images[0].image for r in engine.generate_many(requests))
        if progress:
            progress(len(images), total)
    report = score(detector, case_list, images)
    singles = [c for c in case_list if c.category == "single object"][:diversity_prompts]
    sets = []
    for c in singles:
        result = engine.generate(GenerationRequest(prompt=c.prompt, seed=seed * 100_000 + 77_000, batch_size=seeds,
                                                   **settings))
        sets.append((c.prompt, [g.image for g in result.images]))
        if progress:
            progress(len(images) + len(sets) * seeds, total)
    measured = [diversity(s) for _, s in sets]
    report["diversity"] = {
        "prompts": len(sets), "seeds": seeds,
        "mean pairwise rmse": float(np.mean([m["mean pairwise rmse"] for m in measured])) if measured else 0.0,
        "mean distinct": float(np.mean([m["distinct"] for m in measured])) if measured else 0.0,
        "share with >= 6 distinct": float(np.mean([m["distinct"] >= 6 for m in measured])) if measured else 0.0,
    }
    report["cases"] = [{"category": c.category, "prompt": c.prompt, "correct": ok}
                       for c, ok in zip(case_list, report.pop("correct"))]
    report["images"] = images
    report["diversity sets"] = sets
    return report
