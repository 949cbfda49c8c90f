"""Interpolation between two images through DDIM inversion: each image's latents are run backwards along the
deterministic DDIM trajectory to the noise that regenerates them, the two noises are slerped, and each blend is
sampled forward with DDIM (eta 0). Both directions use the prompt without classifier-free guidance (scale 1), the
setting under which the inversion is faithful, so the end frames reconstruct the two images."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from sfumato.animation.request import AnimationRequest
from sfumato.requests import GeneratedImage, GenerationRequest
from sfumato.sampling.noise import slerp

if TYPE_CHECKING:
    from sfumato.animation.progress import FrameProgress
    from sfumato.engine import Engine


@torch.no_grad()
def ddim_invert(model, guidance, latents: torch.Tensor, steps: int, width: int, height: int,
                on_step=None) -> torch.Tensor:
    """Clean latents -> the noise from which DDIM with the same steps and conditioning regenerates them."""
    from diffusers import DDIMInverseScheduler

    from sfumato.pipelines.steps import denoise

    inverse = DDIMInverseScheduler.from_config(model.scheduler_config)
    inverse.set_timesteps(steps, device=model.device)
    return denoise(model, inverse, latents, inverse.timesteps, guidance, [], width, height, None, on_step)


def interpolate_images(engine: "Engine", request: AnimationRequest, base: GenerationRequest,
                       tracker: "FrameProgress") -> list[GeneratedImage]:
    """`request.frames` frames from the first image to the second (both ends included)."""
    from sfumato.output import infotext
    from sfumato.pipelines import images as imgs
    from sfumato.pipelines.steps import decode_latents, denoise, encode_images, from_pil, set_timesteps, to_pil
    from sfumato.pipelines.tasks import BatchPrompts, guidance_for, scheduler_for

    first = imgs.load_image(request.images[0], "first image").convert("RGB")
    plain = dataclasses.replace(base, sampler="DDIM", eta=0.0, steps=request.inversion_steps, cfg_scale=1.0,
                                width=base.width or first.width // 8 * 8, height=base.height or first.height // 8 * 8)
    resolved = engine.resolve(plain)
    model, encoder = engine.prepared(resolved)
    width, height = resolved.width, resolved.height
    pictures = [imgs.fit(first, width, height), imgs.fit(imgs.load_image(request.images[1], "second image"), width,
                                                          height)]
    guidance = guidance_for(encoder, resolved, BatchPrompts.of(resolved, 1))
    total = request.inversion_steps * (2 + request.frames)
    done = [0]

    def step(_latents=None) -> None:
        done[0] += 1
        tracker(done[0], total)

    noises = [ddim_invert(model, guidance, encode_images(model, from_pil([p])), request.inversion_steps, width,
                          height, step) for p in pictures]
    frames = []
    count = request.frames
    for k in range(count):
        t = k / (count - 1) if count > 1 else 0.0
        scheduler = scheduler_for(model, resolved, resolved.seed)
        timesteps = set_timesteps(scheduler, resolved.steps, 1.0, model.device)
        start = slerp(t, noises[0].float(), noises[1].float()).to(model.dtype)
        latents = denoise(model, scheduler, start, timesteps, guidance, [], width, height, None, step)
        image = to_pil(decode_latents(model, latents))[0]
        text = infotext(resolved, resolved.seed, resolved.subseed, model.info.name, model.hash)
        frames.append(GeneratedImage(image, resolved.seed, resolved.subseed, text + f", Interpolation: {t:.4g}",
                                     resolved, 0))
    return frames
