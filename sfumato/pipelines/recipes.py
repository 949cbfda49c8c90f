"""Image recipes: colorize, restore, style — presets of request fields over one input image, with documented
defaults. Every field can be overridden; the result is an ordinary request (replayable from its PNG)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest

RECIPES: dict[str, dict[str, Any]] = {
    # grayscale -> colour: img2img from the photo's lightness, then the photo's own L with the generated colours
    "colorize": {"colorize": True, "strength": 0.6,
                 "prompt": "a color photograph, natural colors, detailed",
                 "negative_prompt": "black and white, monochrome, grayscale, sepia, desaturated"},
    # denoise / deblur: Real-ESRGAN pass (then back to size), low-strength img2img; a mask's scratches are first
    # filled from their surroundings, then repainted
    "restore": {"init_upscaler": "R-ESRGAN 4x+", "strength": 0.3, "inpaint_fill": "fill",
                "prompt": "a sharp, clean, detailed photograph",
                "negative_prompt": "blurry, noise, grain, scratches, dust, jpeg artifacts, damaged"},
    # style transfer: img2img with a style prompt (or a style LoRA); structure kept by a canny ControlNet unit
    # when one is available for the model (the embedded model ships one; `structure` names another)
    "style": {"strength": 0.6, "prompt": "an oil painting, visible brush strokes",
              "negative_prompt": "photo, photograph"},
}
STYLE_STRUCTURE_WEIGHT = 0.8


def recipe_request(name: str, image: str, structure_model: str | None = None, structure: bool = True,
                   **fields: Any) -> GenerationRequest:
    """The request of recipe `name` for `image`: the recipe's defaults, then `fields` (None values ignored).
    For `style`, `structure_model` (or the model's shipped ControlNet, when `structure_model` is "auto") keeps
    the image's edges."""
    if name not in RECIPES:
        raise InvalidRequest(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    values = {**RECIPES[name], **{k: v for k, v in fields.items() if v is not None}}
    known = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidRequest(f"unknown request field(s): {', '.join(unknown)}")
    values["init_image"] = image
    if name == "style" and structure and not values.get("controls"):
        unit = {"module": "canny", "image": image, "weight": STYLE_STRUCTURE_WEIGHT}
        if structure_model and structure_model != "auto":
            unit["model"] = structure_model
        values["controls"] = [unit]
    return GenerationRequest(**values)
