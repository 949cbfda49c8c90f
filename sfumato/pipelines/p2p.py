"""Prompt-to-Prompt (Hertz et al. 2022): regenerate an image with a word replaced or re-weighted, keeping its layout.

The source prompt and the edited prompt are sampled together from the same noise. For the first `p2p_cross`
fraction of the steps the edited image's cross-attention maps are replaced by the source's (where each word draws
its pixels), and for the first `p2p_self` fraction its self-attention maps too (the spatial structure); after that
the edited prompt alone shapes the details. Re-weighting uses the prompt's own emphasis, `(word:1.4)`, on top.

The maps are taken by our own attention processors, set on this UNet's attention modules for the duration of the
edit and restored after (`edit_attention`); nothing global in diffusers is patched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class AttentionEdit:
    """Which UNet rows copy their attention maps from which, and until which step."""

    def __init__(self, source_rows: dict[int, int], cross_steps: int, self_steps: int):
        self.source_rows = source_rows  # edited row -> source row
        self.cross_steps, self.self_steps = cross_steps, self_steps
        self.step = 0

    def edit(self, probs: torch.Tensor, heads: int, cross: bool) -> torch.Tensor:
        limit = self.cross_steps if cross else self.self_steps
        if self.step >= limit or not self.source_rows:
            return probs
        rows = probs.shape[0] // heads
        probs = probs.view(rows, heads, *probs.shape[1:]).clone()
        edited = torch.tensor(list(self.source_rows), device=probs.device)
        sources = torch.tensor(list(self.source_rows.values()), device=probs.device)
        probs[edited] = probs[sources]
        return probs.view(rows * heads, *probs.shape[2:])


class EditingProcessor:
    """Plain scaled-dot-product attention that exposes the softmax maps to an `AttentionEdit`."""

    def __init__(self, controller: AttentionEdit, cross: bool):
        self.controller, self.cross = controller, cross

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = self.controller.edit(attn.get_attention_scores(query, key, None), attn.heads, self.cross)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def edit_attention(unet, controller: AttentionEdit) -> Iterator[None]:
    """Our processors on every attention module of this UNet inside the block; the previous ones restored after."""
    saved = dict(unet.attn_processors)
    processors = {name: EditingProcessor(controller, cross=name.endswith("attn2.processor")) for name in saved}
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def paired_rows(row_images: list[int], negative_rows: list[bool], images: int) -> dict[int, int]:
    """Images [0, n) are the sources and [n, 2n) their edits: map each edit row to its source's row of the same kind."""
    half = images // 2
    index = {(image, negative): row for row, (image, negative) in enumerate(zip(row_images, negative_rows))}
    return {row: index[(image - half, negative)] for row, (image, negative) in enumerate(zip(row_images, negative_rows))
            if image >= half}
