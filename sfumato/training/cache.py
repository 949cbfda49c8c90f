"""Cached training features: VAE latents and text embeddings, computed once, reused across epochs and runs.

Latents are stored as the VAE posterior's moments (mean and log-variance, so each step still samples),
one entry per image and flip variant, in safetensors shards of 1024 images. Text embeddings are stored
for every caption variant (first chunk only) plus the empty caption used for CFG dropout. A cache
folder is named by a hash of everything that determines its content (model weights fingerprint, data
fingerprint, training sizes, flip, encoder settings), so a change anywhere makes a new cache.

What caching costs: crops are fixed (centre crops at the bucket size, no random crops), flips are
cached as both variants (twice the latents), and captions cannot be re-shuffled per step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

SHARD = 1024


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap identity of a module's weights (names, shapes, sums). The sums are taken in float64, so the identity
    does not depend on how many threads summed (a float32 sum's last digits do)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().double()
        digest.update(f"{name}{tuple(t.shape)}{t.sum().item():.6e}{t.abs().sum().item():.6e}".encode())
    return digest.hexdigest()[:16]


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class CacheStats:
    latents_computed: int = 0
    latents_loaded: int = 0
    texts_computed: int = 0
    texts_loaded: int = 0
    folders: list[str] = field(default_factory=list)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def cached_latents(folder: Path, items: list[tuple[int, bool]], encode: Callable[[list[tuple[int, bool]]], torch.Tensor],
                   batch_size: int, stats: CacheStats, progress: Callable[[int], None] | None = None
                   ) -> dict[tuple[int, bool], torch.Tensor]:
    """Moments [2C, h, w] for each (image index, flipped) item; `encode` maps a list of items to moments."""
    folder.mkdir(parents=True, exist_ok=True)
    stats.folders.append(str(folder))
    out: dict[tuple[int, bool], torch.Tensor] = {}
    for start in range(0, len(items), SHARD):
        shard = items[start:start + SHARD]
        path = folder / f"latents-{start // SHARD:05d}.safetensors"
        if path.exists():
            loaded = load_file(str(path))
            for item in shard:
                out[item] = loaded[f"{item[0]}:{int(item[1])}"]
            stats.latents_loaded += len(shard)
            if progress:
                progress(len(shard))
            continue
        tensors: dict[str, torch.Tensor] = {}
        for i in range(0, len(shard), batch_size):
            chunk = shard[i:i + batch_size]
            moments = encode(chunk).float().cpu()
            for item, m in zip(chunk, moments):
                tensors[f"{item[0]}:{int(item[1])}"] = m.contiguous()
                out[item] = m
            stats.latents_computed += len(chunk)
            if progress:
                progress(len(chunk))
        _atomic_save(tensors, path)
    return out


def cached_texts(folder: Path, captions: list[str], encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]],
                 batch_size: int, stats: CacheStats, dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds [M, T, D], pooled [M, P] or None) for `captions` in order, stored in `dtype` (float16 halves the
    memory of a large caption set; the trainer casts each batch to float32)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "text.safetensors"
    if path.exists():
        loaded = load_file(str(path))
        stats.texts_loaded += len(captions)
        return loaded["embeds"], loaded.get("pooled")
    embeds, pooled = [], []
    for i in range(0, len(captions), batch_size):
        e, p = encode(captions[i:i + batch_size])
        embeds.append(e.to(dtype).cpu())
        if p is not None:
            pooled.append(p.to(dtype).cpu())
    stats.texts_computed += len(captions)
    tensors = {"embeds": torch.cat(embeds)}
    if pooled:
        tensors["pooled"] = torch.cat(pooled)
    _atomic_save(tensors, path, {"captions": json.dumps(captions)})
    return tensors["embeds"], tensors.get("pooled")
