"""Per-instance `forward` replacement for the length of a sampling pass (the speed levers' one mechanism)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def forwards_replaced(replacements: list[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Set each module's instance `forward`, and put back whatever was there (e.g. an offload hook) afterwards."""
    previous = [(module, module.__dict__.get("forward")) for module, _ in replacements]
    try:
        for module, forward in replacements:
            module.forward = forward
        yield
    finally:
        for module, forward in previous:
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward
