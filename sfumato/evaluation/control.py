"""Control adherence: how well generated images follow their control maps (edge-map agreement).

For an edge or scribble map, the generated image's Canny edges are compared with the map: precision (edges of
the image near a map line), recall (map lines near an image edge) and their F1, with a tolerance of `tolerance`
pixels. The same prompt and seed without the unit gives the baseline; adherence is the gain.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from sfumato.control import preprocessors
from sfumato.control.apply import control_map
from sfumato.control.units import ControlUnit


@dataclass
class Case:
    prompt: str
    image: str  # the control image (path)
    module: str = "scribble"
    seed: int = 0
    kind: str = "drawn"


PROMPTS = ["red apple", "grinning face", "sun", "pizza", "ghost", "rocket", "red heart", "cat face"]


def outline(name: str, size: int = 256, width: int = 10) -> Image.Image:
    """A black outline on white, as a person would draw it."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    c, r = size / 2, size * 0.36
    if name == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), outline="black", width=width)
    elif name in ("small-circle-top-left", "small-circle-bottom-right"):  # placement: a small shape off centre
        x = y = size * (0.32 if name.endswith("left") else 0.66)
        draw.ellipse((x - size * 0.2, y - size * 0.2, x + size * 0.2, y + size * 0.2), outline="black", width=width)
    elif name == "square":
        draw.rectangle((c - r, c - r, c + r, c + r), outline="black", width=width)
    else:
        points = {
            "triangle": [(c, c - r), (c + r, c + r * 0.8), (c - r, c + r * 0.8)],
            "diamond": [(c, c - r), (c + r, c), (c, c + r), (c - r, c)],
            "star": [(c + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                      c - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)],
            "heart": [(c + r * 16 * math.sin(t) ** 3 / 17, c - r * (13 * math.cos(t) - 5 * math.cos(2 * t)
                       - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17) for t in [k * math.pi / 24 for k in range(48)]],
            "cross": [(c - r * 0.3, c - r), (c + r * 0.3, c - r), (c + r * 0.3, c - r * 0.3), (c + r, c - r * 0.3),
                      (c + r, c + r * 0.3), (c + r * 0.3, c + r * 0.3), (c + r * 0.3, c + r), (c - r * 0.3, c + r),
                      (c - r * 0.3, c + r * 0.3), (c - r, c + r * 0.3), (c - r, c - r * 0.3), (c - r * 0.3, c - r * 0.3)],
            "arrow": [(c - r, c - r * 0.25), (c, c - r * 0.25), (c, c - r * 0.7), (c + r, c), (c, c + r * 0.7),
                      (c, c + r * 0.25), (c - r, c + r * 0.25)],
        }[name]
        draw.line(points + points[:1], fill="black", width=width, joint="curve")
    return image


SHAPES = ["circle", "triangle", "square", "star", "heart", "diamond", "cross", "arrow", "small-circle-top-left",
          "small-circle-bottom-right"]


def drawn_cases(folder: Path, prompts: list[str] = PROMPTS, shapes: list[str] = SHAPES) -> list[Case]:
    """Every outline with every prompt, one seed each (outlines saved as PNGs in `folder`)."""
    cases = []
    for k, shape in enumerate(shapes):
        path = folder / f"{shape}.png"
        outline(shape).save(path)
        for p, prompt in enumerate(prompts):
            cases.append(Case(prompt, str(path), "scribble", seed=100 * k + p, kind="drawn"))
    return cases


def edge_f1(control_map: Image.Image, generated: Image.Image, tolerance: int = 1) -> float:
    """F1 of the image's Canny edges against the map's lines, each allowed `tolerance` pixels of slack."""
    target = np.asarray(control_map.convert("L").resize(generated.size, Image.Resampling.BOX)) > 32
    edges = np.asarray(preprocessors.run("canny", generated).convert("L")) > 127
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_target = cv2.dilate(target.astype(np.uint8), kernel) > 0
    near_edges = cv2.dilate(edges.astype(np.uint8), kernel) > 0
    if not target.any() or not edges.any():
        return 0.0
    precision = float((edges & near_target).sum() / edges.sum())
    recall = float((target & near_edges).sum() / target.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def adherence(engine, base_request, cases: list[Case], model: str | None = None, weight: float = 1.0,
              progress=None) -> dict:
    """Mean edge F1 with and without the control unit over `cases`, per kind and overall."""
    rows = []
    for index, case in enumerate(cases):
        request = dataclasses.replace(base_request, prompt=case.prompt, seed=case.seed)
        unit = {"image": case.image, "module": case.module, "model": model, "weight": weight}
        controlled = engine.generate(dataclasses.replace(request, controls=[unit])).images[0].image
        plain = engine.generate(request).images[0].image
        resolved = engine.resolve(dataclasses.replace(request, controls=[unit]))
        mapped = control_map(ControlUnit(**resolved.controls[0]), resolved.width, resolved.height)
        rows.append({"kind": case.kind, "prompt": case.prompt, "with": edge_f1(mapped, controlled),
                     "without": edge_f1(mapped, plain)})
        if progress:
            progress(index + 1, len(cases))
    summary: dict = {"cases": len(rows), "rows": rows}
    for kind in sorted({r["kind"] for r in rows}) + ["all"]:
        chosen = [r for r in rows if kind in ("all", r["kind"])]
        summary[kind] = {"with": float(np.mean([r["with"] for r in chosen])),
                         "without": float(np.mean([r["without"] for r in chosen])), "count": len(chosen)}
    return summary


def outline_gain(engine, folder: Path, prompts: list[str], shapes: list[str]) -> dict:
    """Hand-drawn outlines with the model's shipped ControlNet (no model named), no prompt as the base request: the
    mean edge-F1 gain with vs without the unit, and the share of cases the unit improves."""
    from sfumato.requests import GenerationRequest

    summary = adherence(engine, GenerationRequest(prompt=""), drawn_cases(folder, prompts, shapes))
    return {"gain": summary["all"]["with"] - summary["all"]["without"], "all": summary["all"],
            "better": float(np.mean([r["with"] > r["without"] for r in summary["rows"]]))}
