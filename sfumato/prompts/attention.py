"""A1111 emphasis syntax: `(word)`, `((word))`, `(word:1.3)`, `[word]`, `\\(` escapes and `BREAK`.

Semantics follow AUTOMATIC1111's documentation: each `( )` multiplies attention by 1.1, each `[ ]`
divides it by 1.1, `(text:w)` multiplies by w, unclosed brackets apply to the rest of the prompt,
and a `BREAK` keyword starts a new 75-token chunk (returned as the fragment `("BREAK", -1.0)`).
"""

from __future__ import annotations

import re

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = ("BREAK", -1.0)

_TOKEN = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\   # escapes and a lone backslash
    | \( | \[                              # openers
    | :\s*([+-]?[.\d]+)\s*\)               # explicit weight, closing a round bracket
    | \) | \]                              # closers
    | [^\\()\[\]:]+                        # plain text
    | :                                    # a colon that is not a weight
    """,
    re.VERBOSE,
)
MAX_WEIGHT = 100.0  # weights are clamped to +-this: deeper nesting or huge weights would overflow to NaN images


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs, merging neighbours of equal weight.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    fragments: list[list] = []
    ranges: list[list] = []  # [first fragment, end fragment (None while open), factor, round?], in opening order
    round_open: list[int] = []  # indexes into `ranges`
    square_open: list[int] = []

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:] or "\\", 1.0])
        elif token == "(":
            round_open.append(len(ranges))
            ranges.append([len(fragments), None, ROUND_MULTIPLIER, True])
        elif token == "[":
            square_open.append(len(ranges))
            ranges.append([len(fragments), None, SQUARE_MULTIPLIER, False])
        elif weight is not None and round_open:
            ranges[round_open[-1]][2] = _parse_weight(weight)
            ranges[round_open.pop()][1] = len(fragments)
        elif token == ")" and round_open:
            ranges[round_open.pop()][1] = len(fragments)
        elif token == "]" and square_open:
            ranges[square_open.pop()][1] = len(fragments)
        else:
            for i, part in enumerate(split_break(token)):
                if i > 0:
                    fragments.append(list(BREAK))
                fragments.append([part, 1.0])
    for bracket in ranges:  # unclosed brackets apply to the rest of the prompt
        if bracket[1] is None:
            bracket[1] = len(fragments)
    _apply_ranges(fragments, [r for r in ranges if r[3]])
    _apply_ranges(fragments, [r for r in ranges if not r[3]])

    merged: list[list] = []
    for fragment in fragments:
        if fragment[0] == "" and fragment[1] != BREAK[1]:
            continue
        if merged and merged[-1][1] == fragment[1] and fragment[1] != BREAK[1]:
            merged[-1][0].append(fragment[0])
        else:
            merged.append([[fragment[0]], fragment[1]])
    return [("".join(parts), weight if weight == BREAK[1] and parts == [BREAK[0]] else _clamp(weight))
            for parts, weight in merged] or [("", 1.0)]


def _apply_ranges(fragments: list[list], ranges: list[list]) -> None:
    """Multiply each fragment's weight by the factors of the brackets around it, in one sweep. Brackets of one kind
    nest (each closes the last one opened), so a stack of running products holds the factor at every fragment."""
    opens: dict[int, list[float]] = {}
    closes: dict[int, int] = {}
    for start, end, factor, _round in ranges:
        if start < end:
            opens.setdefault(start, []).append(factor)
            closes[end] = closes.get(end, 0) + 1
    products = [1.0]
    for index, fragment in enumerate(fragments):
        del products[len(products) - closes.get(index, 0):]
        for factor in opens.get(index, ()):
            products.append(products[-1] * factor)
        fragment[1] *= products[-1]


def split_break(text: str) -> list[str]:
    """Split at the word BREAK, dropping the whitespace around it (one pass: no regex backtracking over long
    whitespace runs)."""
    parts, start, search = [], 0, 0
    while (found := text.find("BREAK", search)) >= 0:
        end = found + 5
        before = text[found - 1] if found else " "
        after = text[end] if end < len(text) else " "
        search = end
        if _is_word(before) or _is_word(after):
            continue
        parts.append(text[start:found].rstrip())
        while end < len(text) and text[end].isspace():
            end += 1
        start = search = end
    parts.append(text[start:])
    return parts


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _clamp(weight: float) -> float:
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


def _parse_weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # e.g. "1.2.3": A1111 treats it as weight 1.0
        return 1.0
