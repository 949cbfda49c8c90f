"""Self-attention that also sees other images' tokens: reference-only control and style-aligned batches.

Both keep a subject or a style without training, on any SD1/SD2/SDXL UNet, through the self-attention (`attn1`) of
every spatial transformer block:

- **reference** (the A1111 ControlNet extension's `reference_only`): the reference image, noised to the step's
  level, runs through the UNet first ("write": each self-attention stores its input tokens in its bank); in the
  generation's own call ("read") each self-attention attends to its tokens *and* the banked ones. Which blocks
  take part follows the unit's weight: blocks are ranked from the widest (rank 0) to the narrowest, block k of n
  stores when `weight > k / n` (weight 1: all). With CFG, the negative rows blend back toward plain attention by
  the style fidelity: `out = fidelity · out_plain_on_negatives + (1 − fidelity) · out_reference`, so guidance
  pushes toward the reference.
- **shared** (StyleAligned, Hertz et al. 2024): every image of the batch attends to its own tokens and to those of
  the batch's first image (negative rows to the first image's negative row, positive to positive), its queries and
  keys AdaIN-normalised first to the first image's per-channel statistics. `strength` s scales the attention the
  first image's tokens get (log s added to their scores) and how far the AdaIN goes (min(s, 1)); the first image
  itself attends only to itself, so it is the image a plain batch gives.

`installed` sets our processors on this UNet's self-attention modules (the temporal ones of a motion module
excepted) for one pass and restores the previous ones after; nothing in diffusers is patched.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

ADAIN_EPS = 1e-5


@dataclass
class Sharing:
    """StyleAligned's settings for one pass: the strength and, per UNet row, the first image's row of its kind."""

    strength: float
    first_rows: list[int]


@dataclass
class AttentionState:
    """What the processors of one pass share: the mode, each module's bank and the batch's sharing."""

    weights: dict[str, float]  # module name -> rank / count (A1111's attn_weight)
    negative_rows: list[int]  # the UNet rows that carry the negative prompt
    sharing: Sharing | None = None
    mode: str = "read"  # "write": the reference pass stores tokens; "read": the generation attends to them
    write_weight: float = -1.0  # the unit being written: modules with weight > their rank store
    write_fidelity: float = 0.0
    banks: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    fidelities: dict[str, list[float]] = field(default_factory=dict)

    def begin_write(self, weight: float, fidelity: float) -> None:
        self.mode, self.write_weight, self.write_fidelity = "write", weight, fidelity

    def begin_read(self) -> None:
        self.mode = "read"


def self_attention_weights(unet) -> dict[str, float]:
    """A1111's ranking of the spatial self-attentions: widest first, `rank / count` each (stable in module order)."""
    names = [name for name in unet.attn_processors
             if name.endswith("attn1.processor") and "motion_modules" not in name]
    width = {name: unet.get_submodule(name.removesuffix(".processor")).query_dim for name in names}
    ranked = sorted(names, key=lambda name: -width[name])
    return {name: rank / len(ranked) for rank, name in enumerate(ranked)}


def first_rows(row_images: list[int], negative_rows: list[bool]) -> list[int]:
    """For each UNet row, the row of image 0 it shares with: same kind (negative or positive), the same part index
    where image 0 has one (AND prompts), else its last of that kind. Image 0's rows map to themselves."""
    of_first: dict[bool, list[int]] = {}
    for row, (image, negative) in enumerate(zip(row_images, negative_rows)):
        if image == row_images[0]:
            of_first.setdefault(negative, []).append(row)
    seen: dict[tuple[int, bool], int] = {}
    out = []
    for row, (image, negative) in enumerate(zip(row_images, negative_rows)):
        part = seen.get((image, negative), 0)
        seen[(image, negative)] = part + 1
        candidates = of_first.get(negative) or of_first[not negative]
        out.append(row if image == row_images[0] else candidates[min(part, len(candidates) - 1)])
    return out


def adain(features: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """[R, H, N, D] features with each channel's mean and std over the tokens replaced by the style's."""
    mean, std = features.mean(dim=-2, keepdim=True), (features.var(dim=-2, keepdim=True) + ADAIN_EPS).sqrt()
    style_mean, style_std = style.mean(dim=-2, keepdim=True), (style.var(dim=-2, keepdim=True) + ADAIN_EPS).sqrt()
    return (features - mean) / std * style_std + style_mean


class SharingProcessor:
    """Self-attention over the module's own tokens plus the reference's banked ones and/or the first image's."""

    def __init__(self, state: AttentionState, name: str, original):
        self.state, self.name, self.original = state, name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        state = self.state
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        bank = state.banks.setdefault(self.name, [])
        fidelities = state.fidelities.setdefault(self.name, [])
        if state.mode == "write":
            if state.write_weight > state.weights[self.name]:
                bank.append(hidden_states.detach())
                fidelities.append(state.write_fidelity)
            return self.original(attn, hidden_states, None, None, temb, **kwargs)
        if not bank and state.sharing is None:
            return self.original(attn, hidden_states, None, None, temb, **kwargs)
        out = attend(attn, hidden_states, bank, state.sharing)
        if bank:
            fidelity = sum(fidelities) / len(fidelities)
            negative = state.negative_rows
            if fidelity > 1e-5 and negative:
                plain = out.clone()
                plain[negative] = attend(attn, hidden_states, [], state.sharing, negative)
                out = fidelity * plain + (1.0 - fidelity) * out
            bank.clear()
            fidelities.clear()
        return out


def attend(attn, hidden_states: torch.Tensor, bank: list[torch.Tensor], sharing: Sharing | None,
           rows: list[int] | None = None) -> torch.Tensor:
    """Self-attention of `rows` (all by default) over their own tokens, the banked tokens of the same row and, with
    `sharing`, the first image's tokens (AdaIN'd queries and keys, log-strength score shift)."""
    residual = hidden_states
    heads = attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:  # [R, N, H*D] -> [R, H, N, D]
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    selected = list(range(hidden_states.shape[0])) if rows is None else rows
    extra_keys, extra_values = [], []
    if bank:
        banked = torch.cat(bank, dim=1)[selected]
        bank_key = split(attn.to_k(banked))
        extra_keys.append(bank_key if attn.norm_k is None else attn.norm_k(bank_key))
        extra_values.append(split(attn.to_v(banked)))
    q, k, v = query[selected], key[selected], value[selected]
    if sharing is None:
        out = _sdpa(q, [k, *extra_keys], [v, *extra_values], [0.0] * (1 + len(extra_keys)))
    else:
        out = torch.empty_like(q)
        first = [sharing.first_rows[r] for r in selected]
        own = [i for i, r in enumerate(selected) if first[i] == r]
        shared = [i for i, r in enumerate(selected) if first[i] != r]
        if own:
            out[own] = _sdpa(q[own], [k[own], *(e[own] for e in extra_keys)],
                             [v[own], *(e[own] for e in extra_values)], [0.0] * (1 + len(extra_keys)))
        if shared:
            sources = [first[i] for i in shared]
            mix = min(sharing.strength, 1.0)
            q_s, k_s = q[shared], k[shared]
            q_s = q_s + mix * (adain(q_s, query[sources]) - q_s)
            k_s = k_s + mix * (adain(k_s, key[sources]) - k_s)
            shift = math.log(sharing.strength) if sharing.strength > 0 else -math.inf
            out[shared] = _sdpa(q_s, [k_s, key[sources], *(e[shared] for e in extra_keys)],
                                [v[shared], value[sources], *(e[shared] for e in extra_values)],
                                [0.0, shift] + [0.0] * len(extra_keys))
    out = out.transpose(1, 2).reshape(len(selected), -1, heads * out.shape[-1]).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual[selected]
    return out / attn.rescale_output_factor


def _sdpa(query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
          shifts: list[float]) -> torch.Tensor:
    """Attention over the concatenated keys; each group's scores shifted by its `shifts` entry (0: none)."""
    key, value = torch.cat(keys, dim=2), torch.cat(values, dim=2)
    bias = None
    if any(s != 0.0 for s in shifts):
        bias = torch.cat([torch.full((k.shape[2],), s, dtype=query.dtype, device=query.device)
                          for k, s in zip(keys, shifts)]).view(1, 1, 1, -1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)


@contextlib.contextmanager
def installed(unet, state: AttentionState) -> Iterator[AttentionState]:
    """Our processors on this UNet's spatial self-attentions inside the block; the previous ones restored after."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: SharingProcessor(state, name, processor) if name in state.weights else processor
                             for name, processor in saved.items()})
    try:
        yield state
    finally:
        unet.set_attn_processor(saved)
