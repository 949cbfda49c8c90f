"""Seeds and initial noise with A1111 semantics.

Noise is drawn on the CPU from `torch.Generator().manual_seed(seed)`, one generator per image, so
a seed gives the same image on any device and image i of a batch uses seed + i. A variation seed
(subseed) blends the seed's noise toward the subseed's noise by spherical interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985), linear when nearly parallel."""
    low_flat, high_flat = low.flatten().double(), high.flatten().double()
    cos = torch.dot(low_flat / low_flat.norm(), high_flat / high_flat.norm()).clamp(-1.0, 1.0)
    if cos.abs() > 0.9995:
        return (1 - t) * low + t * high
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    mixed = (torch.sin((1 - t) * omega) / sin) * low.double() + (torch.sin(t * omega) / sin) * high.double()
    return mixed.to(low.dtype)


def batch_noise(
    shape: tuple[int, int, int],
    generators: list[torch.Generator],
    subseeds: list[int] | None = None,
    subseed_strength: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Initial latent noise [B, C, H, W]: image i from generator i, optionally slerped toward subseed i (by one
    strength for the batch, or one per image)."""
    strengths = [subseed_strength] * len(generators) if isinstance(subseed_strength, (int, float)) \
        else list(subseed_strength)
    images = []
    for i, generator in enumerate(generators):
        noise = torch.randn((1, *shape), generator=generator, dtype=torch.float32)
        if subseeds is not None and strengths[i] > 0:
            sub = torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(subseeds[i])))
            noise = slerp(strengths[i], noise, sub)
        images.append(noise)
    return torch.cat(images)
