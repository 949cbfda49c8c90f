"""Styles (A1111 `styles.csv`) and dynamic prompts (the Dynamic Prompts extension's core syntax).

- **Styles**: `$SFUMATO_HOME/styles.csv` with columns `name,prompt,negative_prompt` (A1111's file works as is). A
  style's text replaces `{prompt}` when it has one, else it is appended after a comma.
- **Variants** `{red|green|blue}`: one option per image, drawn with that image's seed (or every combination with
  `combinatorial`). **Wildcards** `__name__`: a random line of `$SFUMATO_HOME/wildcards/name.txt` (`#` lines and
  blank lines skipped; `__folder/name__` for sub-folders). Options and lines may nest both.

The engine resolves them once: each image's resolved prompt is stored in the request (`image_prompts`) with the
template beside it, so replay needs neither the files nor the draw again.
"""

from __future__ import annotations

import csv
import itertools
import random
import re
from pathlib import Path

from sfumato.errors import InvalidRequest, PromptSyntaxError
from sfumato.models.home import home

MAX_DEPTH = 12
MAX_COMBINATIONS = 1000
_WILDCARD = re.compile(r"__([A-Za-z0-9_\-/. ]+?)__")


def styles_file() -> Path:
    return home() / "styles.csv"


def load_styles() -> dict[str, tuple[str, str]]:
    """Style name -> (prompt, negative prompt) from `$SFUMATO_HOME/styles.csv` (empty when there is none)."""
    path = styles_file()
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidRequest(f"cannot read styles file {path}: {exc}") from None
    return {row["name"].strip(): ((row.get("prompt") or ""), (row.get("negative_prompt") or ""))
            for row in rows if (row.get("name") or "").strip()}


def merge_style(style: str, prompt: str) -> str:
    """A1111: the style's `{prompt}` is replaced by the prompt; otherwise the two are joined with a comma."""
    if "{prompt}" in style:
        return style.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str]:
    if not names:
        return prompt, negative_prompt
    styles = load_styles()
    for name in names:
        if name not in styles:
            known = ", ".join(sorted(styles)) or f"none: {styles_file()} does not exist"
            raise InvalidRequest(f"unknown style {name!r} (known: {known})")
        style_prompt, style_negative = styles[name]
        prompt, negative_prompt = merge_style(style_prompt, prompt), merge_style(style_negative, negative_prompt)
    return prompt, negative_prompt


def has_dynamic(prompt: str) -> bool:
    return bool(_WILDCARD.search(prompt)) or _first_variant(prompt) is not None


def _first_variant(text: str) -> tuple[int, int, list[str]] | None:
    """(start, end, options) of the first balanced `{a|b}` group (a `{}` without `|` is left alone)."""
    start = None
    depth = 0
    for i, char in enumerate(text):
        if char == "\\":
            continue
        if char == "{" and (i == 0 or text[i - 1] != "\\"):
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                options = _split_top(text[start + 1:i])
                if len(options) > 1:
                    return start, i + 1, options
    return None


def _split_top(body: str) -> list[str]:
    options, depth, current = [], 0, []
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "|" and depth == 0:
            options.append("".join(current))
            current = []
        else:
            current.append(char)
    return options + ["".join(current)]


def _wildcard_lines(name: str) -> list[str]:
    folder = home() / "wildcards"
    path = (folder / f"{name.strip()}.txt").resolve()
    if folder.resolve() not in path.parents:
        raise PromptSyntaxError(f"wildcard __{name}__ must name a file inside {folder}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise PromptSyntaxError(f"wildcard __{name}__ not found (expected {path})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptSyntaxError(f"cannot read wildcard file {path}: {exc}") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise PromptSyntaxError(f"wildcard file {path} has no lines")
    return lines


def _choices(text: str) -> tuple[int, int, list[str]] | None:
    """The first dynamic construct of `text`: (start, end, its options)."""
    variant = _first_variant(text)
    wildcard = _WILDCARD.search(text)
    if wildcard and (variant is None or wildcard.start() < variant[0]):
        return wildcard.start(), wildcard.end(), _wildcard_lines(wildcard.group(1))
    return variant


def random_prompt(template: str, rng: random.Random, depth: int = 0) -> str:
    """One resolution of `template`, drawing every choice from `rng`."""
    if depth > MAX_DEPTH:
        raise PromptSyntaxError(f"dynamic prompt nests deeper than {MAX_DEPTH} levels (a wildcard that names itself?)")
    found = _choices(template)
    if found is None:
        return template
    start, end, options = found
    chosen = random_prompt(rng.choice(options), rng, depth + 1)
    return template[:start] + chosen + random_prompt(template[end:], rng, depth)


def all_prompts(template: str, depth: int = 0) -> list[str]:
    """Every resolution of `template`, in order (combinatorial mode), at most MAX_COMBINATIONS."""
    if depth > MAX_DEPTH:
        raise PromptSyntaxError(f"dynamic prompt nests deeper than {MAX_DEPTH} levels (a wildcard that names itself?)")
    found = _choices(template)
    if found is None:
        return [template]
    start, end, options = found
    heads = [p for option in options for p in all_prompts(option, depth + 1)]
    tails = all_prompts(template[end:], depth)
    if len(heads) * len(tails) > MAX_COMBINATIONS:
        raise PromptSyntaxError(f"the prompt has more than {MAX_COMBINATIONS} combinations")
    return [template[:start] + head + tail for head, tail in itertools.product(heads, tails)]


def image_prompts(template: str, seeds: list[int], combinatorial: bool = False) -> list[str]:
    """The prompt of each image: drawn with the image's own seed, or every combination in order."""
    if combinatorial:
        return all_prompts(template)
    return [random_prompt(template, random.Random(seed)) for seed in seeds]
