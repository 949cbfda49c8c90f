"""Prompt text -> text-encoder embeddings with A1111 semantics.

Long prompts are split into chunks of 75 tokens (a comma within the last 20 tokens moves the tail
to the next chunk), `BREAK` pads the current chunk, and each chunk is encoded as
[BOS] + 75 tokens + [EOS] (77 positions) and concatenated along the sequence axis. Emphasis
weights scale each token's embedding, then the chunk is rescaled to keep its original mean.
`clip_skip` counts like A1111: 1 is the last layer, 2 the penultimate.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch

from sfumato.memory import execution_device
from sfumato.prompts.attention import parse_prompt_attention

CHUNK_LENGTH = 75
CACHE_ENTRIES = 64  # encoded prompts kept per model (the empty negative prompt, prompts repeated across jobs)
COMMA_BACKTRACK = 20


@dataclass
class Conditioning:
    embeds: torch.Tensor  # [B, T, D]
    pooled: torch.Tensor | None = None  # [B, P] (SDXL)


@dataclass
class Chunk:
    ids: list[int]
    weights: list[float]
    tokens: int = 0  # prompt tokens in this chunk (without start, end and padding)


def special_tokens(tokenizer) -> tuple[int, int, int, int]:
    """(start, end, pad, comma) ids: CLIP's BOS/EOS/",</w>" or BERT's [CLS]/[SEP]/","."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    if comma == tokenizer.unk_token_id or comma is None:
        comma = tokenizer.convert_tokens_to_ids(",")
    return bos, eos, pad, comma


def tokenize_weighted(tokenizer, prompt: str, chunk_length: int = CHUNK_LENGTH) -> list[Chunk]:
    """Split a prompt into chunks of `chunk_length` tokens (+ start/end) with per-token emphasis weights."""
    bos, eos, pad, comma = special_tokens(tokenizer)
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal ids, weights, last_comma
        padding = chunk_length - len(ids)
        chunks.append(Chunk([bos, *ids, eos] + [pad] * padding, [1.0, *weights, 1.0] + [1.0] * padding, len(ids)))
        ids, weights, last_comma = [], [], -1

    for text, weight in parse_prompt_attention(prompt):
        if weight == -1.0 and text == "BREAK":
            close_chunk()
            continue
        for token in tokenizer(text, add_special_tokens=False, truncation=False).input_ids:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == chunk_length and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                keep = last_comma + 1
                moved_ids, moved_weights = ids[keep:], weights[keep:]
                ids, weights = ids[:keep], weights[:keep]
                close_chunk()
                ids, weights = moved_ids, moved_weights
            if len(ids) == chunk_length:
                close_chunk()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close_chunk()
    return chunks


def apply_emphasis(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Scale each token's features by its weight, then restore the chunk's original mean (A1111)."""
    scale = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype)
    if not bool((scale != 1.0).any()):
        return hidden
    original_mean = hidden.mean()
    hidden = hidden * scale[None, :, None]
    return hidden * (original_mean / hidden.mean())


class TextEncoderSlot:
    """One tokenizer + text encoder pair and the layer it is read from."""

    def __init__(self, tokenizer, encoder, penultimate_default: bool, chunk_length: int = CHUNK_LENGTH):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.penultimate_default = penultimate_default  # SDXL reads hidden_states[-2] without the final norm
        self.chunk_length = chunk_length
        # CLIP is causal and read without a mask (SD convention); BERT-style encoders get their padding mask
        # and a pooled vector that is the masked mean of the last layer, L2-normalised (sentence-transformers).
        self.is_clip = "clip" in type(encoder).__name__.lower()

    def forward_ids(self, ids: torch.Tensor, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids [B, T] -> (hidden states [B, T, D], pooled [B, P] or None). Differentiable (training)."""
        if not self.is_clip:
            mask = (ids != special_tokens(self.tokenizer)[2]).long()
            out = self.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-clip_skip]
            weights = mask[..., None].to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
            return hidden, pooled
        out = self.encoder(ids, output_hidden_states=True)
        if self.penultimate_default:
            hidden = out.hidden_states[-(clip_skip + 1)]
        elif clip_skip == 1:
            hidden = out.last_hidden_state
        else:
            hidden = getattr(self.encoder, "text_model", self.encoder).final_layer_norm(out.hidden_states[-clip_skip])
        return hidden, getattr(out, "text_embeds", None)

    def first_chunk_ids(self, captions: list[str]) -> torch.Tensor:
        """The first chunk's token ids of each caption, [B, chunk_length + 2] (training truncates here)."""
        rows = [tokenize_weighted(self.tokenizer, caption, self.chunk_length)[0].ids for caption in captions]
        return torch.tensor(rows, device=execution_device(self.encoder))

    @torch.no_grad()
    def encode_many(self, prompts: list[str], clip_skip: int) -> list[tuple[list[torch.Tensor], torch.Tensor | None]]:
        """Each prompt's chunks [1, T, D] (emphasis applied) and first-chunk pooled vector; one encoder pass for all."""
        chunked = [tokenize_weighted(self.tokenizer, prompt, self.chunk_length) for prompt in prompts]
        ids = torch.tensor([chunk.ids for chunks in chunked for chunk in chunks], device=execution_device(self.encoder))
        hidden, pooled = self.forward_ids(ids, clip_skip)
        out, row = [], 0
        for chunks in chunked:
            # clones: a cached prompt must not keep the whole batch's tensors alive
            pieces = [apply_emphasis(hidden[row + i:row + i + 1].clone(), chunk.weights) for i, chunk in enumerate(chunks)]
            out.append((pieces, None if pooled is None else pooled[row:row + 1].clone()))
            row += len(chunks)
        return out


class PromptEncoder:
    """Encodes prompts for a loaded SD1/SD2/SDXL model (one or two CLIP text encoders)."""

    def __init__(self, pipe, family: str, chunk_length: int = CHUNK_LENGTH):
        self.family = family
        sdxl = family.startswith("sdxl")
        self.slots = [
            TextEncoderSlot(getattr(pipe, tok), getattr(pipe, enc), penultimate_default=sdxl, chunk_length=chunk_length)
            for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
            if getattr(pipe, enc, None) is not None
        ]
        self.force_zeros_for_empty_prompt = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        self.expansions: dict[str, str] = {}  # textual-inversion names -> their multi-vector tokens
        self.state: tuple = ()  # what else shapes the text features (the active LoRAs); part of the cache key
        self._cache: OrderedDict[tuple, tuple[list[torch.Tensor], torch.Tensor | None]] = OrderedDict()

    def _expand(self, prompt: str) -> str:
        for name, tokens in self.expansions.items():
            if tokens != name:
                prompt = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", tokens, prompt)
        return prompt

    def token_counts(self, prompt: str) -> tuple[list[int], int]:
        """Tokens per chunk of a prompt (A1111 syntax, BREAK, comma backtracking) and the chunk length."""
        slot = self.slots[0]
        chunks = tokenize_weighted(slot.tokenizer, self._expand(prompt), slot.chunk_length)
        return [c.tokens for c in chunks], slot.chunk_length

    def encode_many(self, prompts: list[str], clip_skip: int) -> list[tuple[list[torch.Tensor], torch.Tensor | None]]:
        """Chunks with all encoders' features concatenated, and the pooled vector of the last encoder, per prompt.

        Prompts not seen lately are encoded together (one pass per encoder); results are kept in a small
        LRU cache keyed by the expanded prompt, `clip_skip` and `state`. Returned tensors are shared: never
        modify them in place.
        """
        keys = [(self.state, self._expand(prompt), clip_skip) for prompt in prompts]
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        if missing:
            per_slot = [slot.encode_many([key[1] for key in missing], clip_skip) for slot in self.slots]
            for j, key in enumerate(missing):
                pieces = [encoded[j] for encoded in per_slot]
                chunks = [torch.cat([p[0][i] for p in pieces], dim=-1) for i in range(len(pieces[0][0]))]
                self._cache[key] = (chunks, pieces[-1][1])
        out = []
        for key in keys:
            self._cache.move_to_end(key)
            out.append(self._cache[key])
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return out

    def empty_chunk(self, clip_skip: int) -> torch.Tensor:
        """The encoded empty prompt's chunk: pads shorter prompts to a batch's chunk count."""
        return self.encode_many([""], clip_skip)[0][0][0]
