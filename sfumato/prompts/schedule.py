"""A1111 prompt editing `[from:to:when]`, alternation `[a|b]` and composable diffusion `a AND b :0.8`.

The grammar follows AUTOMATIC1111's `prompt_parser.py` (read, not copied):

    start     := (prompt | stray "[" "]" "(" ")" ":")*
    prompt    := (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized:= "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled := "[" [prompt ":"] prompt ":" NUMBER "]"
    alternate := "[" prompt ("|" [prompt])+ "]"
    plain     := ([^\\[]():|] | \\ any)+

A prompt that does not parse (a stray `|` outside brackets) is used as it is, for every step, as in A1111.
Emphasis brackets are kept verbatim in each scheduled text; `attention.py` reads them afterwards.

Schedules (A1111's current scheduling): a `when` written with a decimal point is a fraction of the steps
(`0.5`), one without is a step number (`10`); both are cut to the step count. A schedule is a list of
`(end_step, text)`: sampling step `i` (0-based) uses the first entry with `i <= end_step`. Alternation switches
text every step. In the hires pass (`hires_steps` given), fractions count from 1.0 (the end of the first pass:
`[a:b:1.5]` switches halfway through the hires steps) and step numbers from the first pass's step count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Schedule = list[tuple[int, str]]  # (last sampling step this text is used for, text)

_NUMBER = re.compile(r"\s*([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|[+-]?\.\d+(?:[eE][+-]?\d+)?)\s*\]")
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")


class _Fail(Exception):
    """The text at this position is not a construct of the grammar."""


@dataclass
class _Text:
    text: str


@dataclass
class _Emphasis:
    open: str
    body: list
    weight: list | None
    close: str


@dataclass
class _Scheduled:
    before: list | None
    after: list
    when: str
    step: int = 0  # `when` resolved against the step count


@dataclass
class _Alternate:
    options: list[list] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0
        self.failed: set[int] = set()  # bracket positions known not to parse (a bracket's parse depends only on it)
        self.parsed: dict[int, tuple[object, int]] = {}  # bracket position -> (its node, the position after it)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def start(self) -> list:
        """Top level: constructs, plain text, and stray brackets/colons as literal text; a stray `|` fails."""
        nodes: list = []
        while self.pos < len(self.text):
            saved = self.pos
            try:
                nodes += self.prompt(stop="")
            except _Fail:
                self.pos = saved
            if self.pos == saved:
                char = self.peek()
                if char not in "[]():":
                    raise _Fail()
                nodes.append(_Text(char))
                self.pos += 1
        return nodes

    def prompt(self, stop: str) -> list:
        """A sequence of constructs and plain text, up to (not including) one of the `stop` characters."""
        nodes: list = []
        while self.pos < len(self.text):
            char = self.peek()
            if char in stop:
                break
            if char in "([":
                saved = self.pos
                try:
                    if saved in self.failed:
                        raise _Fail()
                    if saved in self.parsed:
                        node, self.pos = self.parsed[saved]
                    else:
                        node = self.bracket()
                        self.parsed[saved] = (node, self.pos)
                    nodes.append(node)
                    continue
                except _Fail:
                    self.failed.add(saved)
                    self.pos = saved
                    if not stop:  # top level: the bracket becomes literal text in `start`
                        break
                    raise
            if char in ")]:|":
                if not stop:
                    break
                raise _Fail()
            nodes.append(_Text(self.plain()))
        return nodes

    def plain(self) -> str:
        start = self.pos
        while self.pos < len(self.text):
            char = self.peek()
            if char == "\\" and self.pos + 1 < len(self.text):
                self.pos += 2
            elif char in "[]():|":
                break
            else:
                self.pos += 1
        if self.pos == start:
            raise _Fail()
        return self.text[start:self.pos]

    def bracket(self):
        opener = self.peek()
        self.pos += 1
        if opener == "(":
            body = self.prompt(stop=":)")
            weight = None
            if self.peek() == ":":
                self.pos += 1
                weight = self.prompt(stop=")")
            if self.peek() != ")":
                raise _Fail()
            self.pos += 1
            return _Emphasis("(", body, weight, ")")
        first = self.prompt(stop=":|]")
        char = self.peek()
        if char == "]":
            self.pos += 1
            return _Emphasis("[", first, None, "]")
        if char == "|":
            options = [first]
            while self.peek() == "|":
                self.pos += 1
                options.append(self.prompt(stop="|]"))
            if self.peek() != "]":
                raise _Fail()
            self.pos += 1
            return _Alternate(options)
        if char != ":":
            raise _Fail()
        self.pos += 1
        number = _NUMBER.match(self.text, self.pos)
        if number:  # [to:when]
            self.pos = number.end()
            return _Scheduled(None, first, number.group(1))
        second = self.prompt(stop=":]")
        if self.peek() != ":":
            raise _Fail()
        self.pos += 1
        number = _NUMBER.match(self.text, self.pos)
        if not number:
            raise _Fail()
        self.pos = number.end()
        return _Scheduled(first, second, number.group(1))


def parse(prompt: str) -> list | None:
    """The prompt's syntax tree, or None when it does not parse (then it is used verbatim)."""
    try:
        return _Parser(prompt).start()
    except (_Fail, RecursionError):
        return None


def _walk(nodes: list):
    for node in nodes:
        yield node
        if isinstance(node, _Emphasis):
            yield from _walk(node.body)
            yield from _walk(node.weight or [])
        elif isinstance(node, _Scheduled):
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Emphasis):
            weight = "" if node.weight is None else ":" + _render(node.weight, step)
            out.append(node.open + _render(node.body, step) + weight + node.close)
        elif isinstance(node, _Scheduled):
            out.append(_render(node.before or [], step) if step <= node.step else _render(node.after, step))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> Schedule:
    """The texts of one prompt over the sampling steps: [(end_step, text), ...], consecutive repeats merged."""
    tree = parse(prompt)
    total = hires_steps if hires_steps is not None else steps
    if tree is None:
        return [(total, prompt)]
    int_offset, float_offset = (steps, 1.0) if hires_steps is not None else (0, 0.0)
    switch_steps = {total}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            value = float(node.when)
            value = (value - float_offset) * total if "." in node.when else value - int_offset
            node.step = min(total, int(value))
            if node.step >= 1:
                switch_steps.add(node.step)
        elif isinstance(node, _Alternate):
            switch_steps.update(range(1, total + 1))
    schedule: Schedule = []
    for step in sorted(switch_steps):
        text = _render(tree, step)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (step, text)
        else:
            schedule.append((step, text))
    return schedule


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable diffusion: `a cat :1.2 AND a dog :0.8` -> [("a cat", 1.2), (" a dog", 0.8)] (A1111)."""
    return [_weighted(part) for part in _AND.split(prompt)]


def _weighted(part: str) -> tuple[str, float]:
    """`text :1.2` -> ("text", 1.2); without a trailing weight the text keeps its own (trailing space removed)."""
    text = part.rstrip()
    colon = text.rfind(":")
    if colon >= 0 and _WEIGHT.fullmatch(text[colon + 1:].lstrip()):
        return text[:colon].rstrip(), float(text[colon + 1:])
    return text, 1.0


def text_at(schedule: Schedule, step: int) -> str:
    """The text used at 0-based sampling step `step` (A1111's reconstruct_cond_batch rule)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]


def has_syntax(prompt: str) -> bool:
    """True when the prompt uses AND, editing or alternation (so it needs more than one plain encoding)."""
    if len(split_and(prompt)) > 1:
        return True
    tree = parse(prompt)
    return tree is not None and any(isinstance(n, (_Scheduled, _Alternate)) for n in _walk(tree))
