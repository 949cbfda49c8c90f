"""Character and multi-view sheets: one subject drawn from named angles, kept the same without training.

`views_request` turns a prompt and a list of views into one ordinary, replayable request: the prompt with the views
as a combinatorial choice (`a red robot, {front view|side view|back view}`: every view once, in order), the views
as one batch (`batch_size` = number of views) that shares self-attention with the first view
(`consistent`, StyleAligned; `pipelines.shared_attention`), and, with a reference image, a `reference_only` unit
(`pipelines.reference`). Each view is an ordinary generated image (its own infotext and sfumato record, so
`sfumato replay` remakes it); `sheet` lays them side by side under their names.

`consistency` measures what sharing buys: the mean pairwise cosine similarity of the views' features (the
evaluation feature extractor), to compare with the same request without sharing.
"""

from __future__ import annotations

import dataclasses

from PIL import Image

from sfumato.errors import InvalidRequest
from sfumato.evaluation.grid import Axis, draw_grid
from sfumato.requests import GenerationRequest

VIEWS = {  # view name -> the words added to the prompt
    "front": "front view",
    "side": "side view",
    "back": "back view",
    "three-quarter": "three-quarter view",
    "top": "top view",
    "left": "left side view",
    "right": "right side view",
}
DEFAULT_VIEWS = ("front", "side", "back")
MAX_VIEWS = 8


def parse_views(text: str | list[str]) -> list[str]:
    """`front,side,back` (or a list) -> known view names, in order, each once."""
    names = [v.strip().lower() for v in (text.split(",") if isinstance(text, str) else text) if v.strip()]
    unknown = [v for v in names if v not in VIEWS]
    if unknown:
        raise InvalidRequest(f"unknown view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)}")
    if len(names) < 2 or len(set(names)) != len(names) or len(names) > MAX_VIEWS:
        raise InvalidRequest(f"a sheet needs 2 to {MAX_VIEWS} different views, got {', '.join(names) or 'none'}")
    return names


def views_request(base: GenerationRequest, views: list[str], reference: str | None = None,
                  consistent: float = 1.0, reference_weight: float = 1.0) -> GenerationRequest:
    """The request that draws `base.prompt` from each of `views` as one consistent batch."""
    if any(c in base.prompt for c in "{}|"):
        raise InvalidRequest("a view sheet's prompt takes no {a|b} choices: the views are the choice")
    choice = "|".join(VIEWS[v] for v in views)
    controls = list(base.controls)
    if reference:
        controls.append({"image": reference, "module": "reference_only", "weight": reference_weight})
    return dataclasses.replace(base, prompt=f"{base.prompt}, {{{choice}}}", combinatorial=True,
                               batch_size=len(views), batch_count=1, consistent=consistent, controls=controls)


def sheet(images: list[Image.Image], views: list[str], min_cell: int = 128) -> Image.Image:
    """The views side by side, each under its name (small images enlarged, nearest, to at least `min_cell`)."""
    return draw_grid([[list(images)]], [Axis("view", list(views), list(views))], min_cell=min_cell)


def consistency(images: list[Image.Image], extractor=None) -> float:
    """Mean pairwise cosine similarity of the images' features (1: the same features everywhere)."""
    from sfumato.evaluation.features import mean_pairwise_cosine

    return mean_pairwise_cosine(images, extractor)
