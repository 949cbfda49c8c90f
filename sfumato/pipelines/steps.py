"""Named steps shared by every task: noise, timesteps, denoise, encode and decode images."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sfumato.models.loader import LoadedModel
from sfumato.pipelines import denoiser as layers
from sfumato.pipelines.guidance import Guidance
from sfumato.pipelines.reference import GroupNormBanks, Reference, ReferenceUnit, alphas_cumprod, style_fidelity
from sfumato.pipelines.shared_attention import AttentionState, Sharing, first_rows, installed, self_attention_weights
from sfumato.sampling.noise import batch_noise, generators_for
from sfumato.speed.stepcache import StepCacheSettings, step_cache_for
from sfumato.speed.tome import token_merging_for

StepCallback = Callable[[torch.Tensor], None]  # called after each step with the latents


@dataclass
class InpaintState:
    """What the denoiser needs to respect a mask: blended into latents, or fed to a 9-channel UNet."""

    mask: torch.Tensor  # [B, 1, h, w] in latent space, 1 = repaint
    init_latents: torch.Tensor  # [B, C, h, w]
    noise: torch.Tensor
    masked_image_latents: torch.Tensor | None = None  # only for inpainting checkpoints


def latent_shape(model: LoadedModel, width: int, height: int) -> tuple[int, int, int]:
    scale = model.vae_scale
    return (model.pipe.unet.config.out_channels, height // scale, width // scale)


def initial_noise(model: LoadedModel, width: int, height: int, seeds: list[int], subseeds: list[int],
                  subseed_strength: float | list[float]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Seeded noise for a batch (CPU, A1111 semantics) and the generators that continue each image's stream."""
    generators = generators_for(seeds)
    noise = batch_noise(latent_shape(model, width, height), generators, subseeds, subseed_strength)
    return noise.to(model.device, model.dtype), generators


def set_timesteps(scheduler, steps: int, strength: float, device: torch.device) -> torch.Tensor:
    """Timesteps for `steps` steps, keeping the last `strength` fraction (img2img), like diffusers."""
    scheduler.set_timesteps(steps, device=device)
    init = min(int(steps * strength), steps)
    start = max(steps - init, 0)
    timesteps = scheduler.timesteps[start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    return timesteps


@torch.no_grad()
def denoise(model: LoadedModel, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, guidance: Guidance,
            generators: list[torch.Generator], width: int, height: int, inpaint: InpaintState | None = None,
            on_step: StepCallback | None = None, control=None, eta: float | None = None,
            step_cache: StepCacheSettings | None = None, token_merging: float = 0.0, unet=None,
            consistent: float = 0.0, hires: bool = False) -> torch.Tensor:
    """Run the sampler over `timesteps`, the model call composed of the layers of `pipelines.denoiser`: (composable)
    classifier-free guidance, skipped when cfg_scale <= 1 and every image has one prompt part; step `i`'s scheduled
    prompts; LCM's embedded guidance scale; `control` (a `control.apply.ControlSet`); an inpainting UNet's extra
    channels or, for a plain UNet, the known region blended back after each step; `step_cache` (DeepCache) and
    `token_merging` (ToMe). `eta` goes to samplers that take it (DDIM's eta, TCD's gamma). `unet` replaces the
    model's own (a motion UNet denoising all frames of a clip together). `control`'s reference-only units and
    `consistent` (a style-aligned batch's strength) share self-attention (`attention_sharing`); `hires` says this is
    a hires pass (reference style fidelity 0, as the A1111 extension)."""
    unet = unet if unet is not None else model.pipe.unet
    guidance, timestep_cond = layers.guidance_embedded(model, unet, guidance, latents)
    concat = None
    if inpaint is not None and inpaint.masked_image_latents is not None:
        rows = torch.tensor(guidance.row_images(), device=latents.device)
        concat = torch.cat([inpaint.mask, inpaint.masked_image_latents], dim=1)[rows]
    sample = layers.blend_known(layers.sampler_step(scheduler, generators, eta, latents.shape[0]), scheduler,
                                inpaint, timesteps)
    seed = generators[0].initial_seed() if generators else 0
    with step_cache_for(unet, step_cache) as cache, token_merging_for(unet, token_merging) as tome, \
            attention_sharing(model, unet, control, guidance, consistent, hires, seed) as reference:
        call = layers.inpaint_channels(layers.hooked(layers.unet_call(unet), cache, tome), concat)
        call = layers.referenced(call, reference, len(timesteps))
        call = layers.conditioned(layers.controlled(call, control, len(timesteps), guidance), model, unet, guidance,
                                  width, height, timestep_cond)
        predict = layers.guided(call, scheduler, guidance, latents.device)
        for i, t in enumerate(timesteps):
            latents = sample(predict(latents, t, i), t, latents, i)
            if on_step:
                on_step(latents)
    return latents


@contextlib.contextmanager
def attention_sharing(model: LoadedModel, unet, control, guidance: Guidance, consistent: float, hires: bool,
                      seed: int) -> Iterator[Reference | None]:
    """Our self-attention processors for this pass when it has reference units or a consistent batch (none
    otherwise: the plain UNet, bit for bit); yields the reference passes to run, or None."""
    prepared = list(getattr(control, "references", None) or [])
    if not prepared and consistent <= 0:
        yield None
        return
    negative_flags, row_images = guidance.row_is_negative(), guidance.row_images()
    negative = [row for row, is_negative in enumerate(negative_flags) if is_negative]
    sharing = Sharing(consistent, first_rows(row_images, negative_flags)) if consistent > 0 else None
    state = AttentionState(self_attention_weights(unet), negative, sharing)
    sdxl = unet.config.get("addition_embed_type") == "text_time"
    units = [ReferenceUnit(p.unit.module, p.unit.weight, p.unit.guidance_start, p.unit.guidance_end,
                           style_fidelity(p.unit.threshold_a, p.unit.control_mode, sdxl, hires),
                           encode_images(model, p.image * 2 - 1)) for p in prepared]
    group_norms = GroupNormBanks(unet, negative) if any(u.adain for u in units) else None
    with installed(unet, state), (group_norms.installed() if group_norms else contextlib.nullcontext()):
        yield Reference(units, alphas_cumprod(model.scheduler_config), state, group_norms, seed) if units else None


@contextlib.contextmanager
def vae_precision(vae) -> Iterator[None]:
    """Run an fp16 VAE in fp32 inside the block when its config asks (`force_upcast`: SDXL's VAE overflows in fp16)."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(torch.float16)


@torch.no_grad()
def encode_images(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (the mean of the VAE posterior: deterministic)."""
    vae = model.pipe.vae
    pixels = pixels.to(model.device)
    with vae_precision(vae):
        latents = _vae_pass(vae, "encoder", pixels.shape[-2:], False,
                            lambda: vae.encode(pixels.to(vae.dtype)).latent_dist.mode())
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(model.dtype)


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> pixels in [0, 1], [B, 3, H, W] float32 on the CPU."""
    vae = model.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with vae_precision(vae):
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor + shift
        pixels = _vae_pass(vae, "decoder", scaled.shape[-2:], True, lambda: vae.decode(scaled, return_dict=False)[0])
    return (pixels.float() / 2 + 0.5).clamp(0, 1).cpu()


def _vae_pass(vae, part: str, size: torch.Size, latent: bool, run):
    """An encode/decode; a tiled one (`memory` VAE tiling) shares GroupNorm statistics across its tiles."""
    from sfumato.memory.tiled_vae import tiles, with_shared_statistics

    if tiles(vae, size[0], size[1], latent):
        return with_shared_statistics(getattr(vae, part), run)
    return run()


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> [B, 3, H, W] in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2)


@contextlib.contextmanager
def seamless_tiling(model: LoadedModel, enabled: bool) -> Iterator[None]:
    """Circular padding on every UNet and VAE convolution, only inside this block."""
    if not enabled:
        yield
        return
    convs = [m for part in (model.pipe.unet, model.pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [conv.padding_mode for conv in convs]
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in zip(convs, saved):
            conv.padding_mode = mode
