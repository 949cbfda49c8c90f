"""A1111 `<lora:name:weight>` tags inside prompts."""

from __future__ import annotations

import re

from sfumato.errors import PromptSyntaxError

_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?>")


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove `<lora:name[:weight]>` tags from `prompt`; return the clean prompt and (name, weight) pairs."""
    loras: list[tuple[str, float]] = []
    for match in _LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), (match.group(2) or "1").strip()
        try:
            loras.append((name, float(weight)))
        except ValueError:
            raise PromptSyntaxError(f"LoRA tag {match.group(0)!r} has a weight that is not a number") from None
    return _LORA_TAG.sub("", prompt).strip(), loras
