"""A1111-style X/Y/Z plots: any request field on any axis, one labelled PNG.

`--x "sampler=Euler a,DDIM" --y "steps=10,20,30" --z "cfg_scale=2,7"` draws one X×Y grid per Z value,
side by side, with column labels on top, row labels on the left and the Z label above each grid.
Values are comma-separated (CSV quoting for values that contain commas). Besides the request fields
(`steps`, `cfg_scale`, `seed`, `negative_prompt`, ...), `size=512x768` sets width and height and
`prompt_sr=cat,dog,fox` replaces the first value in the prompt by each value (A1111's Prompt S/R).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import typing
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest

ALIASES = {"cfg": "cfg_scale", "negative": "negative_prompt", "denoising_strength": "strength",
           "prompt_s/r": "prompt_sr", "sr": "prompt_sr"}
NOT_ON_AXES = {"loras", "outpaint", "batch_size", "batch_count"}
SPECIAL = ("size", "prompt_sr")


@dataclass
class Axis:
    field: str
    values: list[Any]
    labels: list[str]


def _convert(field: str, text: str, hint) -> Any:
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    kind = kinds[0]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise InvalidRequest(f"axis {field}: {text!r} is not a valid {kind.__name__}") from None


def parse_axis(spec: str) -> Axis:
    """`field=v1,v2,...` -> Axis (values converted to the field's type)."""
    name, sep, rest = spec.partition("=")
    field = name.strip().lower().replace("-", "_").replace(" ", "_")
    field = ALIASES.get(field, field)
    if not sep or not rest.strip():
        raise InvalidRequest(f"axis {spec!r}: expected FIELD=VALUE1,VALUE2,...")
    texts = [v.strip() for v in next(csv.reader(io.StringIO(rest), skipinitialspace=True)) if v.strip()]
    hints = typing.get_type_hints(GenerationRequest)
    if field not in SPECIAL and (field not in hints or field in NOT_ON_AXES):
        allowed = sorted([*(h for h in hints if h not in NOT_ON_AXES), *SPECIAL])
        raise InvalidRequest(f"axis field {name.strip()!r} is not a request field; choose from: {', '.join(allowed)}")
    if field == "size":
        values = []
        for t in texts:
            w, x, h = t.lower().partition("x")
            if not x or not w.isdigit() or not h.isdigit():
                raise InvalidRequest(f"axis size: {t!r} is not WIDTHxHEIGHT")
            values.append((int(w), int(h)))
    elif field == "prompt_sr":
        values = texts
    else:
        values = [_convert(field, t, hints[field]) for t in texts]
    return Axis(field, values, [f"{field}: {t}" if field != "prompt_sr" else t for t in texts])


def apply_axis(request: GenerationRequest, axis: Axis, value: Any) -> GenerationRequest:
    if axis.field == "size":
        return dataclasses.replace(request, width=value[0], height=value[1])
    if axis.field == "prompt_sr":
        search = axis.values[0]
        if search not in request.prompt:
            raise InvalidRequest(f"prompt_sr: {search!r} does not occur in the prompt")
        return dataclasses.replace(request, prompt=request.prompt.replace(search, value))
    return dataclasses.replace(request, **{axis.field: value})


def cell_requests(base: GenerationRequest, axes: list[Axis | None]) -> list[list[list[GenerationRequest]]]:
    """requests[z][y][x] for the X, Y and optional Z axes."""
    x, y, z = (a or Axis("", [None], [""]) for a in (axes + [None, None, None])[:3])

    def at(a: Axis, v, r):
        return r if not a.field else apply_axis(r, a, v)

    return [[[at(x, vx, at(y, vy, at(z, vz, base))) for vx in x.values] for vy in y.values] for vz in z.values]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a single long word stays on its line)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _text_block(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str, font) -> None:
    left, top, right, bottom = box
    lines = _wrap(draw, text, font, right - left - 4)
    line_h = font.size + 2
    y = top + (bottom - top - line_h * len(lines)) / 2
    for line in lines:
        w = draw.textlength(line, font=font)
        draw.text((left + max(0, (right - left - w) / 2), y), line, fill="black", font=font)
        y += line_h


def draw_grid(cells: list[list[list[Image.Image]]], axes: list[Axis | None], min_cell: int = 128) -> Image.Image:
    """Labelled grid image; cells smaller than `min_cell` are enlarged (nearest) so labels stay readable."""
    x, y, z = (axes + [None, None, None])[:3]
    cw, ch = cells[0][0][0].size
    scale = max(1, -(-min_cell // min(cw, ch)))
    cw, ch = cw * scale, ch * scale
    font = _font(max(12, min(28, cw // 9)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = max([len(_wrap(measure, t, font, cw - 4)) for a in (x, z) if a is not None for t in a.labels] or [1])
    label_h = (font.size + 2) * lines + 12
    left = 0 if y is None else int(max(measure.textlength(t, font=font) for t in y.labels)) + 16
    top = (label_h if x is not None else 0) + (label_h if z is not None else 0)
    cols, rows = len(cells[0][0]), len(cells[0])
    block_w, gap = left + cols * cw, 16
    canvas = Image.new("RGB", (len(cells) * block_w + (len(cells) - 1) * gap, top + rows * ch), "white")
    draw = ImageDraw.Draw(canvas)
    for zi, plane in enumerate(cells):
        ox = zi * (block_w + gap)
        if z is not None:
            _text_block(draw, (ox + left, 0, ox + block_w, label_h), z.labels[zi], font)
        xy_top = label_h if z is not None else 0
        for xi in range(cols):
            if x is not None:
                _text_block(draw, (ox + left + xi * cw, xy_top, ox + left + (xi + 1) * cw, top), x.labels[xi], font)
        for yi, row in enumerate(plane):
            if y is not None:
                _text_block(draw, (ox, top + yi * ch, ox + left, top + (yi + 1) * ch), y.labels[yi], font)
            for xi, image in enumerate(row):
                canvas.paste(image.resize((cw, ch), Image.Resampling.NEAREST), (ox + left + xi * cw, top + yi * ch))
    return canvas


def xyz_grid(engine, base: GenerationRequest, axes: list[Axis | None], min_cell: int = 128,
             progress: Callable[[int, int], None] | None = None) -> tuple[Image.Image, list]:
    """Generate every cell (compatible cells run as one batch) and draw the grid; also returns the results."""
    requests = cell_requests(base.with_seeds_resolved(), axes)  # one seed for every cell, as in A1111
    flat = [r for plane in requests for row in plane for r in row]
    if len(flat) > 1000:
        raise InvalidRequest(f"the grid has {len(flat)} cells; at most 1000")
    results = engine.generate_many(flat, progress)
    images = iter(r.images[0].image if r.images else Image.new("RGB", (r.request.width, r.request.height), "gray")
                  for r in results)  # a cell withheld by the safety check stays grey
    cells = [[[next(images) for _ in row] for row in plane] for plane in requests]
    return draw_grid(cells, axes, min_cell), results
