"""A1111 emphasis (`(word:1.3)`, `[word]`) for SD3 and FLUX: their pipelines' text features, with each token's
features scaled by its weight and the sequence's mean restored (`apply_emphasis`, as for SD/SDXL).

SD3: CLIP-L and CLIP-G (penultimate layer, first 75-token chunk as diffusers truncates, pooled vectors concatenated)
and T5 (256 tokens) — emphasis on all three; without T5 its 256 positions are zeros, as in diffusers. FLUX: T5 (512 tokens) carries
the emphasis; the pooled CLIP-L vector (read at the end token) takes the text without the markup, since one vector
has no per-token weights. Without any weight the features equal the pipelines' own `encode_prompt` (tested).
"""

from __future__ import annotations

import torch

from sfumato.prompts.attention import parse_prompt_attention
from sfumato.prompts.encode import TextEncoderSlot, apply_emphasis


def _parts(text: str) -> list[tuple[str, float]]:
    return [(part, weight) for part, weight in parse_prompt_attention(text) if not (weight == -1.0 and part == "BREAK")]


def has_emphasis(text: str) -> bool:
    return any(weight != 1.0 for _, weight in _parts(text))


def plain_text(text: str) -> str:
    """The prompt without emphasis markup."""
    return "".join(part for part, _ in _parts(text))


def t5_features(tokenizer, encoder, text: str, max_length: int, device) -> torch.Tensor:
    """[1, max_length, D]: the text's T5 tokens (+ end, padded, truncated like the pipelines) with emphasis."""
    ids: list[int] = []
    weights: list[float] = []
    for part, weight in _parts(text):
        tokens = tokenizer(part, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    ids, weights = ids[:max_length - 1] + [tokenizer.eos_token_id], weights[:max_length - 1] + [1.0]
    padding = max_length - len(ids)
    ids, weights = ids + [tokenizer.pad_token_id] * padding, weights + [1.0] * padding
    hidden = encoder(torch.tensor([ids], device=device))[0]
    return apply_emphasis(hidden, weights)


@torch.no_grad()
def sd3_features(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence [1, 77 + T5 tokens, D], pooled [1, P]) of one SD3 prompt."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    sequences, pooled = [], []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        pieces, vector = TextEncoderSlot(tokenizer, encoder, penultimate_default=True).encode_many([text], 1)[0]
        sequences.append(pieces[0])
        pooled.append(vector)
    clip = torch.cat(sequences, dim=-1)
    if pipe.text_encoder_3 is None:
        t5 = torch.zeros(1, 256, pipe.transformer.config.joint_attention_dim, device=device)
    else:
        t5 = t5_features(pipe.tokenizer_3, pipe.text_encoder_3, text, 256, device)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5.to(clip.dtype)], dim=-2).to(dtype), torch.cat(pooled, dim=-1).to(dtype)


@torch.no_grad()
def flux_features(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence [1, 512, D] with emphasis, pooled CLIP-L vector [1, P] of the plain text) of one FLUX prompt."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    pooled = pipe._get_clip_prompt_embeds(prompt=[plain_text(text)], device=device, num_images_per_prompt=1)
    sequence = t5_features(pipe.tokenizer_2, pipe.text_encoder_2, text, 512, device)
    return sequence.to(dtype), pooled.to(dtype)
