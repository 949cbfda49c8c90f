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
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs, merging neighbours of equal weight.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    fragments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:] or "\\", 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), _parse_weight(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    fragments.append(list(BREAK))
                fragments.append([part, 1.0])

    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    merged: list[list] = []
    for fragment in fragments:
        if fragment[0] == "" and fragment[1] != BREAK[1]:
            continue
        if merged and merged[-1][1] == fragment[1] and fragment[1] != BREAK[1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(fragment)
    return [(text_, weight) for text_, weight in merged] or [("", 1.0)]


def _parse_weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # e.g. "1.2.3": A1111 treats it as weight 1.0
        return 1.0
