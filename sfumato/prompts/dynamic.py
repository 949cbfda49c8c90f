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
import random
import re
from dataclasses import dataclass
from pathlib import Path

from sfumato.errors import InvalidRequest, PromptSyntaxError
from sfumato.models.home import home

MAX_DEPTH = 12
MAX_COMBINATIONS = 1000
MAX_CHOICES = 256  # variants and wildcards in one prompt (a `{|}` flood is refused, not expanded)
MAX_EXPANDED_CHARS = 100_000  # one drawn prompt, wildcards included (the engine then checks its own limit)
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
    return any(not isinstance(node, str) for node in _template(prompt))


def _template(prompt: str) -> list:
    """The parsed prompt, refused when it holds more than MAX_CHOICES choices."""
    nodes = _parse(prompt, 0)
    count, pending = 0, [nodes]
    while pending:
        for node in pending.pop():
            if isinstance(node, _Variant):
                pending += node.options
            count += not isinstance(node, str)
        if count > MAX_CHOICES:
            raise PromptSyntaxError(f"the prompt has more than {MAX_CHOICES} variants and wildcards")
    return nodes


@dataclass
class _Variant:
    options: list[list]  # each option's nodes


@dataclass
class _Wildcard:
    name: str


def _parse(text: str, depth: int) -> list:
    """`text` as nodes, in one pass: literal strings, `_Variant`s (`{a|b}` groups of two or more options, whose
    options are parsed in turn) and `_Wildcard`s. A group with one option (`{a}`) stays literal text, as does
    everything after an unclosed `{`; a brace or bar after a backslash is literal."""
    if depth > MAX_DEPTH:
        raise PromptSyntaxError(f"dynamic prompt nests deeper than {MAX_DEPTH} levels")
    nodes: list = []
    literal_from = 0
    start, level, bars = 0, 0, []
    for i, char in enumerate(text):
        if i and text[i - 1] == "\\":
            continue
        if char == "{":
            if level == 0:
                start, bars = i, []
            level += 1
        elif char == "|" and level == 1:
            bars.append(i)
        elif char == "}" and level:
            level -= 1
            if level == 0 and bars:
                nodes += _wildcards(text[literal_from:start])
                cuts = [start, *bars, i]
                nodes.append(_Variant([_parse(text[a + 1:b], depth + 1) for a, b in zip(cuts, cuts[1:])]))
                literal_from = i + 1
    nodes += _wildcards(text[literal_from:])
    return nodes


def _wildcards(text: str) -> list:
    """Literal text with its `__name__` wildcards as nodes."""
    nodes: list = []
    position = 0
    for match in _WILDCARD.finditer(text):
        nodes += [text[position:match.start()], _Wildcard(match.group(1))]
        position = match.end()
    nodes.append(text[position:])
    return [node for node in nodes if node != ""]


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


def random_prompt(template: str, rng: random.Random) -> str:
    """One resolution of `template`, drawing every choice from `rng` in reading order (no recursion: a stack of
    the sequences being read)."""
    out: list[str] = []
    length = 0
    stack = [(iter(_template(template)), 0)]
    while stack:
        nodes, depth = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
        elif isinstance(node, str):
            out.append(node)
            length += len(node)
            if length > MAX_EXPANDED_CHARS:
                raise PromptSyntaxError(f"the dynamic prompt expands to more than {MAX_EXPANDED_CHARS} characters")
        else:
            if depth + 1 > MAX_DEPTH:
                raise PromptSyntaxError(f"dynamic prompt nests deeper than {MAX_DEPTH} levels (a wildcard that names "
                                        "itself?)")
            if isinstance(node, _Variant):
                chosen = rng.choice(node.options)
            else:
                chosen = _parse(rng.choice(_wildcard_lines(node.name)), depth + 1)
            stack.append((iter(chosen), depth + 1))
    return "".join(out)


def all_prompts(template: str) -> list[str]:
    """Every resolution of `template`, in order (combinatorial mode), at most MAX_COMBINATIONS."""
    return _combinations(_template(template), 0)


def _combinations(nodes: list, depth: int) -> list[str]:
    """Every text of a node sequence, earlier choices varying slowest (recursion only into options, at most
    MAX_DEPTH deep)."""
    if depth > MAX_DEPTH:
        raise PromptSyntaxError(f"dynamic prompt nests deeper than {MAX_DEPTH} levels (a wildcard that names itself?)")
    results = [""]
    for node in nodes:
        if isinstance(node, str):
            alternatives = [node]
        elif isinstance(node, _Variant):
            alternatives = [text for option in node.options for text in _combinations(option, depth + 1)]
        else:
            alternatives = [text for line in _wildcard_lines(node.name)
                            for text in _combinations(_parse(line, depth + 1), depth + 1)]
        if len(results) * len(alternatives) > MAX_COMBINATIONS:
            raise PromptSyntaxError(f"the prompt has more than {MAX_COMBINATIONS} combinations")
        results = [head + tail for head in results for tail in alternatives]
    return results


def image_prompts(template: str, seeds: list[int], combinatorial: bool = False) -> list[str]:
    """The prompt of each image: drawn with the image's own seed, or every combination in order."""
    if combinatorial:
        return all_prompts(template)
    return [random_prompt(template, random.Random(seed)) for seed in seeds]
