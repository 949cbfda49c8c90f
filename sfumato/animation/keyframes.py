"""Keyframes and schedules (Deforum's syntax): `0: "a red apple", 24: "a green apple"` for prompts,
`0:(0.65), 12:(0.4)` for numbers; values between keyframes are interpolated, held before the first and after the last.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

from sfumato.errors import InvalidRequest

MAX_FRAMES = 1000
MAX_SCHEDULE_CHARS = 64 * MAX_FRAMES  # a pair per frame with room for spaces
_PROMPT_KEY = re.compile(r"\s*(\d+)\s*:\s*")
_NUMBER_PAIR = re.compile(r"\s*(\d+)\s*:\s*\(?\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*\)?\s*(?:,|$)")
_AFTER_PROMPT = re.compile(r"\s*(?:,|\n|$)\s*")


def parse_prompts(value: Any) -> dict[int, str]:
    """Prompt keyframes from a mapping {frame: prompt} or the text `0: "a red apple", 24: "a green apple"`
    (prompts in double quotes, JSON escapes; one keyframe per line without quotes also works)."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str):
        items = _prompt_items(value)
    else:
        raise InvalidRequest("prompt keyframes must be a mapping of frame -> prompt or text like "
                             "'0: \"a red apple\", 24: \"a green apple\"'")
    keys: dict[int, str] = {}
    for frame, prompt in items:
        frame = _frame(frame)
        if not isinstance(prompt, str):
            raise InvalidRequest(f"keyframe {frame}: the prompt must be text")
        keys[frame] = prompt
    return dict(sorted(keys.items()))


def _prompt_items(text: str) -> list[tuple[str, str]]:
    items, position = [], 0
    decoder = json.JSONDecoder()
    end_of_text = len(text.rstrip())
    while position < end_of_text:
        key = _PROMPT_KEY.match(text, position)
        if not key:
            raise InvalidRequest(f"prompt keyframes: expected 'FRAME: \"prompt\"' at {text[position:position + 30]!r}")
        position = key.end()
        if text[position:position + 1] == '"':
            try:
                prompt, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError:
                raise InvalidRequest(f"prompt keyframes: unterminated quote after frame {key.group(1)}") from None
            rest = _AFTER_PROMPT.match(text, position)
            if rest is None:
                raise InvalidRequest(f"prompt keyframes: expected ',' after the prompt of frame {key.group(1)}")
            position = rest.end()
        else:  # one unquoted keyframe per line
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            prompt, position = text[position:end].strip().rstrip(","), end + 1
        items.append((key.group(1), prompt))
    if not items:
        raise InvalidRequest("prompt keyframes are empty")
    return items


def parse_numbers(value: Any, name: str) -> dict[int, float]:
    """A number (every frame), a mapping {frame: number} or the text `0:(0.65), 12:(0.4)`."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a number or a schedule like '0:(0.6), 12:(0.4)'")
    if isinstance(value, (int, float)):
        return {0: float(value)}
    if isinstance(value, dict):
        try:
            keys = {_frame(k): float(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise InvalidRequest(f"{name}: every keyframe needs a number") from None
    elif isinstance(value, str):
        if len(value) > MAX_SCHEDULE_CHARS:
            raise InvalidRequest(f"{name} schedule is longer than {MAX_SCHEDULE_CHARS} characters")
        text = value.strip()
        if len(text) <= 64:  # a plain number; never float() a long text (its error repeats the whole text)
            try:
                return {0: float(text)}
            except ValueError:
                pass
        keys, position = {}, 0
        while position < len(text):
            pair = _NUMBER_PAIR.match(text, position)
            if not pair:
                raise InvalidRequest(f"{name}: expected 'FRAME:(VALUE)' at {text[position:position + 30]!r}")
            keys[_frame(pair.group(1))] = float(pair.group(2))
            position = pair.end()
    else:
        raise InvalidRequest(f"{name} must be a number or a schedule like '0:(0.6), 12:(0.4)'")
    if not keys:
        raise InvalidRequest(f"{name} schedule is empty")
    return dict(sorted(keys.items()))


def _frame(value: Any) -> int:
    try:
        frame = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"keyframe {value!r} is not a frame number") from None
    if isinstance(value, float) and value != frame or not 0 <= frame < MAX_FRAMES:
        raise InvalidRequest(f"keyframe {value!r} must be a whole frame number in 0..{MAX_FRAMES - 1}")
    return frame


def segment(keys: list[int], frame: int) -> tuple[int, int, float]:
    """The keyframes around `frame` and the fraction of the way from the first to the second
    (both the same keyframe before the first, after the last and on a keyframe)."""
    index = bisect.bisect_right(keys, frame) - 1
    if index < 0:
        return keys[0], keys[0], 0.0
    if keys[index] == frame or index == len(keys) - 1:
        return keys[index], keys[index], 0.0
    a, b = keys[index], keys[index + 1]
    return a, b, (frame - a) / (b - a)


def value_at(keys: dict[int, float], frame: int) -> float:
    """A number schedule at `frame`, linear between keyframes."""
    a, b, t = segment(list(keys), frame)
    return keys[a] + t * (keys[b] - keys[a])
