"""Classifier-free guidance over scheduled prompts: what each UNet row sees at each step, and how rows combine.

Every image of a batch has a negative prompt and one or more positive parts (`AND`, each with a weight); each
text has a schedule over the steps (prompt editing, alternation). At step `i` the UNet gets one row per image for
the negative (when guided) and one row per part; the result per image is A1111's composable-diffusion sum

    uncond + cfg_scale * sum_k weight_k * (cond_k - uncond)

which is plain classifier-free guidance for a single part of weight 1. Each distinct text is encoded once (the
prompt encoder's LRU cache keeps them across requests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from sfumato.prompts.encode import Conditioning, PromptEncoder
from sfumato.prompts.schedule import Schedule, prompt_schedule, split_and, text_at


@dataclass
class Part:
    weight: float
    schedule: Schedule  # (end_step, text)


@dataclass
class Guidance:
    """Scheduled conditioning of every image of a batch and its guidance scale (one number, or one per image)."""

    parts: list[list[Part]]  # per image
    negatives: list[Schedule]  # per image
    cfg_scale: float | torch.Tensor
    encoded: dict[str, Conditioning]  # text -> [1, T, D] (+ pooled), all padded to the same T
    zero_negative: bool = False  # SDXL's force_zeros_for_empty_prompt applies to empty negative prompts
    shift: Conditioning | None = None  # added to every positive row (the request's conditioning directions)
    shifts: list[Conditioning | None] | None = None  # or one per image (batched frames with their own directions)
    # combine()'s constant tensors per (device, dtype): made once, not every step (each would be a host-to-device
    # copy, and a CUDA stream sync, per step)
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def images(self) -> int:
        return len(self.parts)

    @property
    def plain(self) -> bool:
        """Each image has one part of weight 1 (ordinary classifier-free guidance)."""
        return all(len(p) == 1 and p[0].weight == 1.0 for p in self.parts)

    @functools.cached_property
    def guided(self) -> bool:  # asked every step: computed once (a Guidance is not changed after it is built)
        return bool((torch.as_tensor(self.cfg_scale) > 1.0).any()) or not self.plain

    @property
    def static(self) -> bool:
        """No text changes over the steps (the conditioning can be built once)."""
        return all(len(s) == 1 for s in self.negatives) and all(len(p.schedule) == 1 for ps in self.parts for p in ps)

    def row_images(self) -> list[int]:
        """The image each UNet row belongs to: the negatives first (when guided), then every part."""
        rows = list(range(self.images)) if self.guided else []
        return rows + [b for b, parts in enumerate(self.parts) for _ in parts]

    def row_is_negative(self) -> list[bool]:
        count = self.images if self.guided else 0
        return [True] * count + [False] * sum(len(p) for p in self.parts)

    def texts_at(self, step: int) -> list[str]:
        negatives = [text_at(s, step) for s in self.negatives] if self.guided else []
        return negatives + [text_at(p.schedule, step) for parts in self.parts for p in parts]

    def at(self, step: int) -> Conditioning:
        """The conditioning of every row at 0-based sampling step `step`."""
        rows = []
        owners = self.row_images()
        for row, (text, negative) in enumerate(zip(self.texts_at(step), self.row_is_negative())):
            entry = self.encoded[text]
            if negative and self.zero_negative and text == "":
                entry = Conditioning(torch.zeros_like(entry.embeds),
                                     None if entry.pooled is None else torch.zeros_like(entry.pooled))
            elif not negative:
                shift = self.shift if self.shifts is None else self.shifts[owners[row]]
                if shift is not None:
                    entry = Conditioning(entry.embeds + shift.embeds,
                                         None if entry.pooled is None else entry.pooled + shift.pooled)
            rows.append(entry)
        pooled = None if rows[0].pooled is None else torch.cat([r.pooled for r in rows])
        return Conditioning(torch.cat([r.embeds for r in rows]), pooled)

    def combine(self, prediction: torch.Tensor) -> torch.Tensor:
        """Rows' predictions -> one per image (A1111's composable diffusion; plain CFG for single parts)."""
        if not self.guided:
            return prediction
        count = self.images
        cfg, owners, weights = self._combine_constants(prediction.device, prediction.dtype, prediction.dim())
        negative, positive = prediction[:count], prediction[count:]
        if self.plain:
            return negative + cfg * (positive - negative)
        delta = torch.zeros_like(negative).index_add_(0, owners, weights * (positive - negative[owners]))
        return negative + cfg * delta

    def _combine_constants(self, device: torch.device, dtype: torch.dtype, dims: int) -> tuple:
        """cfg (a number or one per image), each positive row's image and each part's weight, on `device`."""
        key = (device, dtype, dims)
        if key not in self._constants:
            shape = (-1, *([1] * (dims - 1)))
            cfg = self.cfg_scale
            if isinstance(cfg, torch.Tensor):
                cfg = cfg.to(device, dtype).view(shape)
            owners = weights = None
            if not self.plain:
                owners = torch.tensor(self.row_images()[self.images:], device=device)
                weights = torch.tensor([p.weight for parts in self.parts for p in parts], device=device,
                                       dtype=dtype).view(shape)
            self._constants[key] = (cfg, owners, weights)
        return self._constants[key]


def build_guidance(encoder: PromptEncoder, prompts: list[str], negatives: list[str], cfg_scale: float | torch.Tensor,
                   clip_skip: int, steps: int, hires_steps: int | None = None,
                   directions: list[tuple[str, str, float]] = (),
                   image_directions: list[list[tuple[str, str, float]]] | None = None) -> Guidance:
    """Parse (AND, editing, alternation), schedule and encode the prompts of a batch, one entry per image.
    `directions` (toward, away_from, strength) shift every positive row by strength * (toward - away_from);
    `image_directions` (one list per image) shift each image's rows by its own instead."""
    per_image = image_directions is not None and any(list(d) != list(image_directions[0]) for d in image_directions)
    if image_directions is not None and not per_image:
        directions = image_directions[0]
    parts = [[Part(weight, prompt_schedule(text, steps, hires_steps)) for text, weight in split_and(prompt)]
             for prompt in prompts]
    negative_schedules = [prompt_schedule(text, steps, hires_steps) for text in negatives]
    positive_texts = list(dict.fromkeys(t for ps in parts for p in ps for _, t in p.schedule))
    negative_texts = list(dict.fromkeys(t for s in negative_schedules for _, t in s))
    if per_image:
        image_directions = [[tuple(d) for d in ds if d[2] != 0] for ds in image_directions]
        directions = [d for ds in image_directions for d in ds]
    else:
        directions = [d for d in directions if d[2] != 0]
    if len(positive_texts) == 1 and len(negative_texts) == 1 and not directions:
        # one prompt and one negative: separate encoder passes, as diffusers does (parity to float precision)
        encoded = {**dict(zip(negative_texts, encoder.encode_many(negative_texts, clip_skip))),
                   **dict(zip(positive_texts, encoder.encode_many(positive_texts, clip_skip)))}
    else:
        texts = list(dict.fromkeys(positive_texts + negative_texts + [t for d in directions for t in d[:2]]))
        encoded = dict(zip(texts, encoder.encode_many(texts, clip_skip)))
    chunks = max(len(pieces) for pieces, _ in encoded.values())
    conditioning = {}
    for text, (pieces, pooled) in encoded.items():
        pieces = list(pieces)
        while len(pieces) < chunks:
            pieces.append(encoder.empty_chunk(clip_skip))
        conditioning[text] = Conditioning(torch.cat(pieces, dim=1), pooled)
    zero = encoder.force_zeros_for_empty_prompt
    if per_image:
        return Guidance(parts, negative_schedules, cfg_scale, conditioning, zero,
                        shifts=[_shift(conditioning, ds) for ds in image_directions])
    return Guidance(parts, negative_schedules, cfg_scale, conditioning, zero, _shift(conditioning, directions))


def _shift(conditioning: dict[str, Conditioning], directions: list[tuple[str, str, float]]) -> Conditioning | None:
    """The sum of the directions' strength * (toward - away_from), embeddings and pooled vectors alike."""
    if not directions:
        return None
    embeds, pooled = 0, 0
    for toward, away, strength in directions:
        a, b = conditioning[toward], conditioning[away]
        embeds = embeds + strength * (a.embeds - b.embeds)
        if a.pooled is not None:
            pooled = pooled + strength * (a.pooled - b.pooled)
    return Conditioning(embeds, pooled if isinstance(pooled, torch.Tensor) else None)
