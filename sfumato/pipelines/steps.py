"""Named steps shared by every task: noise, timesteps, denoise, encode and decode images."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sfumato.models.loader import LoadedModel
from sfumato.pipelines.guidance import Guidance
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
                  subseed_strength: float) -> tuple[torch.Tensor, list[torch.Generator]]:
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


def added_conditioning(model: LoadedModel, pooled: torch.Tensor | None, negative_rows: list[bool], width: int,
                       height: int) -> dict[str, torch.Tensor] | None:
    """SDXL's pooled text embeddings and size/crop (or aesthetic score) time ids, one row per UNet row."""
    if pooled is None or model.pipe.unet.config.get("addition_embed_type") != "text_time":
        return None
    if getattr(model.pipe.config, "requires_aesthetics_score", False):
        positive, negative = [height, width, 0, 0, 6.0], [height, width, 0, 0, 2.5]
    else:
        positive = negative = [height, width, 0, 0, height, width]
    ids = [negative if is_negative else positive for is_negative in negative_rows]
    return {"text_embeds": pooled, "time_ids": torch.tensor(ids, dtype=pooled.dtype, device=model.device)}


@torch.no_grad()
def denoise(model: LoadedModel, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, guidance: Guidance,
            generators: list[torch.Generator], width: int, height: int, inpaint: InpaintState | None = None,
            on_step: StepCallback | None = None, control=None, eta: float | None = None,
            step_cache: StepCacheSettings | None = None, token_merging: float = 0.0, unet=None) -> torch.Tensor:
    """Run the sampler over `timesteps` with (composable) classifier-free guidance; skipped when cfg_scale <= 1
    and every image has a single prompt part. Step `i` uses the scheduled prompts of step `i` (`Guidance.at`).
    `control` (a `control.apply.ControlSet`) adds ControlNet residuals, T2I-Adapter features and IP-Adapter image
    embeddings. `eta` goes to samplers that take it (DDIM's eta, TCD's gamma). A UNet distilled with the guidance
    scale as an input (LCM's w-conditioning, `time_cond_proj_dim`) gets cfg_scale embedded instead of a CFG pass,
    as diffusers does. `step_cache` reuses the deep UNet features between full calls (DeepCache, `speed.stepcache`);
    `token_merging` merges that share of the tokens before full-resolution self-attention (ToMe, `speed.tome`).
    `unet` replaces the model's own (a motion UNet denoising all frames of a clip together)."""
    unet = unet if unet is not None else model.pipe.unet
    timestep_cond = None
    if getattr(unet.config, "time_cond_proj_dim", None) is not None:
        scale = torch.as_tensor(guidance.cfg_scale, dtype=torch.float32).flatten().expand(guidance.images)
        guidance = dataclasses.replace(guidance, cfg_scale=1.0)
        embedding = model.pipe.get_guidance_scale_embedding(scale - 1, unet.config.time_cond_proj_dim)
        timestep_cond = embedding[torch.tensor(guidance.row_images())].to(latents.device, latents.dtype)
    row_list = guidance.row_images()
    rows = torch.tensor(row_list, device=latents.device)
    negative_rows = guidance.row_is_negative()
    concat = None
    if inpaint is not None and inpaint.masked_image_latents is not None:
        concat = torch.cat([inpaint.mask, inpaint.masked_image_latents], dim=1)[rows]
    step_parameters = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generators} if "generator" in step_parameters and len(generators) == latents.shape[0] \
        else {}
    if eta is not None and "eta" in step_parameters:
        step_kwargs["eta"] = eta
    fixed = None
    with step_cache_for(unet, step_cache) as cache, token_merging_for(unet, token_merging) as tome:
        for i, t in enumerate(timesteps):
            if fixed is None or not guidance.static:
                cond = guidance.at(i)
                added = added_conditioning(model, cond.pooled, negative_rows, width, height)
                # the pooled text vector, for UNets with a projection class embedding (ldm family)
                class_labels = cond.pooled if getattr(unet.config, "class_embed_type", None) is not None else None
                fixed = (cond.embeds, added, class_labels)
            context, added, class_labels = fixed
            model_input = scheduler.scale_model_input(latents[rows], t)
            kwargs = {"encoder_hidden_states": context, "added_cond_kwargs": added, "class_labels": class_labels,
                      "timestep_cond": timestep_cond}
            if control is not None:
                kwargs.update(control.unet_kwargs(i, len(timesteps), model_input, t, context, added, class_labels,
                                                  negative_rows, row_list))
            if concat is not None:
                model_input = torch.cat([model_input, concat], dim=1)
            if cache is not None:
                cache.before_call(tuple(model_input.shape))
            if tome is not None:
                tome.before_call(*model_input.shape[-2:])
            prediction = unet(model_input, t, return_dict=False, **kwargs)[0]
            prediction = guidance.combine(prediction)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            if inpaint is not None and inpaint.masked_image_latents is None:
                latents = _blend_known_region(scheduler, latents, inpaint, timesteps, i)
            if on_step:
                on_step(latents)
    return latents


def _blend_known_region(scheduler, latents: torch.Tensor, state: InpaintState, timesteps: torch.Tensor,
                        i: int) -> torch.Tensor:
    known = state.init_latents
    if i < len(timesteps) - 1:
        known = scheduler.add_noise(state.init_latents, state.noise, timesteps[i + 1: i + 2])
    return (1 - state.mask) * known + state.mask * latents


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
