"""Control adherence: how well generated images follow their control maps (edge-map agreement).

For an edge or scribble map, the generated image's Canny edges are compared with the map: precision (edges of
the image near a map line), recall (map lines near an image edge) and their F1, with a tolerance of `tolerance`
pixels. The same prompt and seed without the unit gives the baseline; adherence is the gain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

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
