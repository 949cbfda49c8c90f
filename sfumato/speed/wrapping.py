"""Per-instance `forward` replacement for the length of a sampling pass (the speed levers' one mechanism), and the
hooks that let state kept between denoiser calls survive CUDA graphs."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch.utils._pytree import tree_map_only

AFTER_CALL = "_sfumato_after_call"  # on a module whose call's tensors are reused by its next call (CUDA graphs)


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


def cloned(tree):
    """Every tensor of a nested tuple/list/dict/ModelOutput copied into memory of its own."""
    return tree_map_only(torch.Tensor, torch.clone, tree)


def calls_reuse_outputs(module: torch.nn.Module) -> None:
    """Mark `module` (compiled with CUDA graphs) as replaying into the same memory: what one call returns, and any
    tensor made inside it, is overwritten by its next call (torch starts a new cudagraph "iteration" on every
    invocation and frees the last one's tensors). From now on each call's outputs are cloned right after it, outside
    the graph (torch's own advice), and the `after_each_call` hooks run there too."""
    compiled = module._compiled_call_impl
    if compiled is None or AFTER_CALL in module.__dict__:
        return
    hooks: list[Callable[[], None]] = []

    def call(*args, **kwargs):
        out = compiled(*args, **kwargs)
        for hook in list(hooks):
            hook()
        return cloned(out)

    module.__dict__[AFTER_CALL] = hooks
    module._compiled_call_impl = call


@contextlib.contextmanager
def after_each_call(module: torch.nn.Module, hook: Callable[[], None]) -> Iterator[None]:
    """Inside the block, `hook()` runs after each call of `module` when its calls reuse their memory
    (`calls_reuse_outputs`): a step cache copies the tensors it keeps for the next calls. Elsewhere: nothing."""
    hooks = module.__dict__.get(AFTER_CALL)
    if hooks is None:
        yield
        return
    hooks.append(hook)
    try:
        yield
    finally:
        hooks.remove(hook)
