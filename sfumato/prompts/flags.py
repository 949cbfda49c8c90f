"""Midjourney-style flags at the end of a prompt, and exactly what each maps to.

| flag                   | effect on the request                                                             |
|------------------------|-----------------------------------------------------------------------------------|
| `--ar W:H`, `--aspect` | width/height: the W:H size nearest to the model's native area, sides rounded to   |
|                        | multiples of 64 (of native/8 for models under 512 px)                             |
| `--no a, b`            | "a, b" appended to negative_prompt                                                |
| `--seed N`             | seed = N                                                                          |
| `--tile`               | tile = True (seamless tiling)                                                     |
| `--chaos N`, `--c`     | N in 0..100: subseed_strength = N/100 (variation seeds: each image drifts further |
|                        | from its seed's composition)                                                      |
| `--stylize N`, `--s`   | N in 0..1000: cfg_scale = 10 - 5*N/1000 (stylize 0 -> 10, default 100 -> 9.5,      |
|                        | 1000 -> 5: more stylize, less literal prompt following)                           |
| `--quality Q`, `--q`   | Q in .25, .5, 1, 2: steps = round(model default steps * Q), at least 1            |

Flags must come after the prompt text; unknown flags are an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sfumato.errors import PromptSyntaxError

_FLAG_START = re.compile(r"(?:^|\s)--[a-zA-Z]")
_ALIASES = {"aspect": "ar", "c": "chaos", "s": "stylize", "q": "quality"}
_KNOWN = ("ar", "no", "seed", "tile", "chaos", "stylize", "quality")
QUALITIES = (0.25, 0.5, 1.0, 2.0)


@dataclass
class PromptFlags:
    aspect_ratio: tuple[int, int] | None = None
    no: str | None = None
    seed: int | None = None
    tile: bool = False
    chaos: float | None = None
    stylize: float | None = None
    quality: float | None = None

    def is_empty(self) -> bool:
        return self == PromptFlags()


def split_flags(prompt: str) -> tuple[str, PromptFlags]:
    """Split `prompt` into its text and its trailing Midjourney-style flags."""
    match = _FLAG_START.search(prompt)
    if not match:
        return prompt, PromptFlags()
    text, tail = prompt[: match.start()].rstrip(), prompt[match.start() :].strip()
    flags = PromptFlags()
    for chunk in re.split(r"(?:^|\s)--", tail)[1:]:
        name, _, value = chunk.strip().partition(" ")
        name, value = _ALIASES.get(name.lower(), name.lower()), value.strip()
        if name not in _KNOWN:
            raise PromptSyntaxError(f"unknown prompt flag --{name} (known: {', '.join('--' + k for k in _KNOWN)})")
        _apply(flags, name, value)
    return text, flags


def _apply(flags: PromptFlags, name: str, value: str) -> None:
    if name == "tile":
        if value:
            raise PromptSyntaxError(f"--tile takes no value, got {value!r}")
        flags.tile = True
        return
    if not value:
        raise PromptSyntaxError(f"--{name} needs a value")
    if name == "ar":
        match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", value)
        if not match or 0 in (int(match.group(1)), int(match.group(2))):
            raise PromptSyntaxError(f"--ar needs W:H with positive integers, got {value!r}")
        w, h = int(match.group(1)), int(match.group(2))
        if max(w / h, h / w) > 8:
            raise PromptSyntaxError(f"--ar {value} is more extreme than 8:1")
        flags.aspect_ratio = (w, h)
    elif name == "no":
        flags.no = value
    elif name == "seed":
        flags.seed = _number(name, value, 0, 2**32 - 1, integer=True)
    elif name == "chaos":
        flags.chaos = _number(name, value, 0, 100)
    elif name == "stylize":
        flags.stylize = _number(name, value, 0, 1000)
    elif name == "quality":
        quality = _number(name, value, 0, 2)
        if quality not in QUALITIES:
            raise PromptSyntaxError(f"--quality must be one of .25, .5, 1, 2, got {value}")
        flags.quality = quality


def _number(name: str, value: str, low: float, high: float, integer: bool = False) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise PromptSyntaxError(f"--{name} needs a number, got {value!r}") from None
    if not low <= number <= high:
        raise PromptSyntaxError(f"--{name} must be between {low:g} and {high:g}, got {value}")
    return number


def size_for_aspect(aspect: tuple[int, int], native_side: int) -> tuple[int, int]:
    """Width and height with ratio `aspect` whose area is nearest the native square's area."""
    step = 64 if native_side >= 512 else max(8, native_side // 8)
    ratio = aspect[0] / aspect[1]
    width = math.sqrt(native_side * native_side * ratio)
    height = width / ratio
    return max(step, round(width / step) * step), max(step, round(height / step) * step)


def stylize_to_cfg(stylize: float) -> float:
    return round(10.0 - 5.0 * stylize / 1000.0, 3)
