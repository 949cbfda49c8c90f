"""Step caching for diffusion transformers (SD3's MM-DiT, FLUX): first-block caching.

Every call runs the first transformer block. On a *cached* call the other blocks do not run: the output is the
first block's output plus the residual that the remaining blocks added at the last full call (for both the image
and the text stream). Which calls are cached:

- interval mode (`cache_interval = N`): a full call every N calls, as DeepCache on UNets;
- adaptive mode (`cache_threshold = T`, the First-Block-Cache rule of ParaAttention/TeaCache): a call is cached
  while the first block's residual differs from the one at the last full call by less than T (relative mean
  absolute difference); larger T skips more.

Blocks are called by the diffusers transformers as `block(hidden_states=..., encoder_hidden_states=..., ...)` and
return `(encoder_hidden_states, hidden_states)` (SD3's last block returns `None` for the text stream), for the
double- and single-stream blocks of FLUX alike. Wrappers go on the block instances for one generation and are
removed afterwards; nothing in diffusers is patched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from sfumato.speed.wrapping import after_each_call, cloned, forwards_replaced


class BlockCache:
    def __init__(self, transformer, interval: int = 1, threshold: float = 0.0):
        self.transformer = transformer
        self.blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks",
                                                                          None) or [])
        self.interval, self.threshold = interval, threshold
        self.calls = self.full_calls = 0
        self.skip = False
        self.previous_residual: torch.Tensor | None = None
        self.first_out: tuple | None = None
        self.rest_residual: tuple | None = None

    def _decide(self, residual: torch.Tensor) -> bool:
        previous = self.previous_residual
        if previous is None or self.rest_residual is None or previous.shape != residual.shape:
            return False
        if self.threshold > 0:
            change = (residual - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
            return bool(change < self.threshold)
        return self.calls % self.interval != 0

    def _first(self, original):
        def forward(*args, **kwargs):
            hidden_in = kwargs["hidden_states"]
            encoder, hidden = original(*args, **kwargs)
            residual = hidden - hidden_in
            self.skip = self._decide(residual)
            self.calls += 1
            if not self.skip:
                self.previous_residual, self.full_calls = residual, self.full_calls + 1
            self.first_out = (encoder, hidden)
            return encoder, hidden

        return forward

    def _rest(self, original, last: bool):
        def forward(*args, **kwargs):
            if self.skip:
                encoder, hidden = kwargs["encoder_hidden_states"], kwargs["hidden_states"]
                if not last:
                    return encoder, hidden
                encoder_residual, hidden_residual = self.rest_residual
                return (None if encoder_residual is None else encoder + encoder_residual), hidden + hidden_residual
            encoder, hidden = original(*args, **kwargs)
            if last:
                first_encoder, first_hidden = self.first_out
                self.rest_residual = (None if encoder is None else encoder - first_encoder, hidden - first_hidden)
            return encoder, hidden

        return forward

    def keep(self) -> None:
        """After a call of a transformer whose calls reuse their memory (CUDA graphs): own copies of what a full call
        left for the next calls."""
        if not self.skip:
            self.previous_residual, self.rest_residual = cloned((self.previous_residual, self.rest_residual))

    @contextlib.contextmanager
    def installed(self) -> Iterator[BlockCache]:
        replacements = []
        if len(self.blocks) > 1:
            replacements.append((self.blocks[0], self._first(self.blocks[0].forward)))
            replacements += [(block, self._rest(block.forward, last=index == len(self.blocks) - 1))
                             for index, block in enumerate(self.blocks[1:], start=1)]
        with forwards_replaced(replacements), after_each_call(self.transformer, self.keep):
            yield self


def block_cache_for(transformer, interval: int, threshold: float):
    if interval <= 1 and threshold <= 0:
        return contextlib.nullcontext(None)
    return BlockCache(transformer, interval, threshold).installed()
