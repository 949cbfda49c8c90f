"""txt2img, img2img, inpaint, outpaint and hires fix, composed from the shared steps.

Every task is one batch: prompt -> conditioning -> first pass (from noise, or from an init image
with a strength and optional mask) -> optional hires pass -> decode -> optional inpaint overlay.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from sfumato.control.apply import ControlSet
from sfumato.control.ip_adapter import image_embeds
from sfumato.control.models import ControlModel
from sfumato.control.units import ControlUnit
from sfumato.errors import InvalidRequest
from sfumato.models.loader import LoadedModel
from sfumato.pipelines import images as imgs
from sfumato.pipelines.steps import (
    InpaintState,
    decode_latents,
    denoise,
    encode_images,
    from_pil,
    initial_noise,
    seamless_tiling,
    set_timesteps,
    to_pil,
)
from sfumato.pipelines.guidance import Guidance, build_guidance
from sfumato.pipelines.instruct import instruct_latents
from sfumato.pipelines.p2p import AttentionEdit, edit_attention, paired_rows
from sfumato.pipelines.upscaling import UpscalerFor, colorize_like, grayscale, sd_upscale
from sfumato.prompts.encode import PromptEncoder
from sfumato.requests import GenerationRequest
from sfumato.sampling.samplers import make_scheduler
from sfumato.speed.stepcache import StepCacheSettings
from sfumato.upscale import upscale


@dataclass
class Controls:
    """A request's control inputs: units with their loaded models, and IP-Adapter reference images (the adapter
    itself is loaded into the pipeline by the engine for the duration of the request)."""

    units: list[tuple[ControlUnit, ControlModel]] = field(default_factory=list)
    ip_images: list[Image.Image] = field(default_factory=list)


class Progress(Protocol):
    def add_total(self, steps: int) -> None: ...

    def step(self, latents: torch.Tensor | None = None) -> None: ...


@dataclass
class Source:
    """The init image (already at output size) and the optional mask (white = repaint); `original` is the image
    as given (at output size), before colourising turned it gray or an init upscaler restored it."""

    image: Image.Image
    mask: Image.Image | None = None
    original: Image.Image | None = None


def prepare_source(request: GenerationRequest, upscaler_for: UpscalerFor | None = None) -> Source | None:
    """Load the init image and mask of a resolved request (outpaint canvases included)."""
    if not request.init_image:
        return None
    image = imgs.load_image(request.init_image, "init image")
    if request.colorize or request.init_upscaler:
        original = imgs.fit(image, request.width, request.height)
        if request.init_upscaler:  # restoration: at least one network pass, then down to the request's size
            image = upscale(image.convert("RGB"), upscaler_for(request.init_upscaler), request.width, request.height,
                            min_passes=1)
        if request.colorize:
            image = grayscale(image)
        mask = None
        if request.mask:
            mask = imgs.prepare_mask(imgs.load_image(request.mask, "mask"), request.width, request.height,
                                     request.mask_blur)
        return _filled(request, Source(imgs.fit(image, request.width, request.height), mask, original))
    if request.outpaint:
        image, mask = imgs.outpaint_canvas(image, request.outpaint)
        return Source(imgs.fit(image, request.width, request.height),
                      imgs.prepare_mask(mask, request.width, request.height, request.mask_blur))
    mask = None
    if request.mask:
        mask = imgs.prepare_mask(imgs.load_image(request.mask, "mask"), request.width, request.height, request.mask_blur)
    return _filled(request, Source(imgs.fit(image, request.width, request.height), mask))


def _filled(request: GenerationRequest, source: Source) -> Source:
    """With `inpaint_fill="fill"` the masked area starts from its surroundings instead of the original pixels."""
    if request.inpaint_fill == "fill" and source.mask is not None:
        source.image = imgs.fill_masked(source.image, source.mask)
    return source


@dataclass
class BatchPrompts:
    """The texts of every image of a batch (rows of several requests together, or one request's wildcards)."""

    prompts: list[str]
    negatives: list[str]
    cfg_scale: float | torch.Tensor  # one number, or one per image
    directions: list[list[tuple[str, str, float]]] | None = None  # per image (None: the request's, for all)
    subseed_strengths: list[float] | None = None  # per image (None: the request's, for all)

    @classmethod
    def of(cls, request: GenerationRequest, images: int) -> "BatchPrompts":
        return cls([request.prompt] * images, [request.negative_prompt] * images, request.cfg_scale)


def guidance_for(encoder: PromptEncoder, request: GenerationRequest, texts: BatchPrompts,
                 hires: bool = False) -> Guidance:
    """The scheduled conditioning of a pass: the first pass over `steps`, the hires pass over its own steps."""
    hires_steps = (request.hires_steps or request.steps) if hires else None
    return build_guidance(encoder, texts.prompts, texts.negatives, texts.cfg_scale, request.clip_skip, request.steps,
                          hires_steps, request.directions, texts.directions)


def generate_batch(model: LoadedModel, encoder: PromptEncoder, request: GenerationRequest, seeds: list[int],
                   subseeds: list[int], progress: Progress, texts: BatchPrompts | None = None,
                   controls: Controls | None = None, upscaler_for: UpscalerFor | None = None) -> list[Image.Image]:
    """One batch of images for a resolved request (`texts` given: each image's own prompt, negative and CFG;
    `controls`: the request's control units with their loaded models; `upscaler_for`: loads an upscaler by name)."""
    texts = texts or BatchPrompts.of(request, len(seeds))
    source = prepare_source(request, upscaler_for)
    if request.sd_upscale > 1.0:
        return _sd_upscale_batch(model, encoder, request, seeds, subseeds, progress, texts, controls, upscaler_for,
                                 source)
    if request.instruction_edit:
        latents = instruct_latents(model, request, guidance_for(encoder, request, texts),
                                   scheduler_for(model, request, seeds[0]), seeds, subseeds, source.image, progress)
        return to_pil(decode_latents(model, latents))
    if request.p2p_source is not None:
        return prompt_to_prompt(model, encoder, request, seeds, subseeds, progress, texts, controls)
    with seamless_tiling(model, request.tile):
        control = _control_set(model, controls, request.width, request.height, len(seeds))
        latents = first_pass(model, request, guidance_for(encoder, request, texts), seeds, subseeds, source, progress,
                             control, texts.subseed_strengths)
        width, height = request.width, request.height
        if request.hires_scale > 1.0:
            guidance = guidance_for(encoder, request, texts, hires=True)
            control = _control_set(model, controls, *hires_size(request), len(seeds))
            latents, width, height = hires_pass(model, request, guidance, latents, seeds, subseeds, progress,
                                                control, upscaler_for, texts.subseed_strengths)
        pixels = decode_latents(model, latents)
    return finish(request, to_pil(pixels), source)


def finish(request: GenerationRequest, images: list[Image.Image], source: Source | None) -> list[Image.Image]:
    """Inpaint overlay (the original kept outside the mask) and colourising (the original's lightness kept)."""
    if source is None:
        return images
    size = images[0].size
    if source.mask is not None and request.inpaint_full_image_overlay:
        original = source.image.resize(size, Image.Resampling.LANCZOS)
        mask = source.mask.resize(size, Image.Resampling.BILINEAR)
        images = [imgs.overlay(image, original, mask) for image in images]
    if request.colorize:
        original = source.original.resize(size, Image.Resampling.LANCZOS) if source.original.size != size \
            else source.original
        images = [colorize_like(original, image) for image in images]
    return images


def _sd_upscale_batch(model: LoadedModel, encoder: PromptEncoder, request: GenerationRequest, seeds: list[int],
                      subseeds: list[int], progress: Progress, texts: BatchPrompts, controls: Controls | None,
                      upscaler_for: UpscalerFor, source: Source | None) -> list[Image.Image]:
    """SD upscale: the init image (or, without one, this batch's generated images) upscaled and refined in tiles."""
    if source is None:
        plain = dataclasses.replace(request, sd_upscale=1.0)
        bases = generate_batch(model, encoder, plain, seeds, subseeds, progress, texts, controls, upscaler_for)
    else:
        bases = [source.image] * len(seeds)
    upscaler = upscaler_for(request.sd_upscale_upscaler)
    tile_request = dataclasses.replace(request, strength=request.sd_upscale_strength, sd_upscale=1.0)
    out = []
    with seamless_tiling(model, request.tile):
        for i, base in enumerate(bases):
            one = BatchPrompts([texts.prompts[i]], [texts.negatives[i]], texts.cfg_scale
                               if not isinstance(texts.cfg_scale, torch.Tensor) else texts.cfg_scale[i:i + 1])
            guidance = guidance_for(encoder, request, one)

            def refine(tile: Image.Image, seed: int = seeds[i], subseed: int = subseeds[i]) -> Image.Image:
                latents = first_pass(model, tile_request, guidance, [seed], [subseed], Source(tile), progress)
                return to_pil(decode_latents(model, latents))[0]

            out.append(sd_upscale(request, base, upscaler, refine))
    return finish(request, out, source) if source is not None and request.colorize else out


class _CountingProgress:
    """Passes progress on and advances the attention edit's step counter."""

    def __init__(self, progress: Progress, edit: AttentionEdit):
        self.progress, self.edit = progress, edit

    def add_total(self, steps: int) -> None:
        self.progress.add_total(steps)

    def step(self, latents: torch.Tensor | None = None) -> None:
        self.edit.step += 1
        self.progress.step(latents)


def prompt_to_prompt(model: LoadedModel, encoder: PromptEncoder, request: GenerationRequest, seeds: list[int],
                     subseeds: list[int], progress: Progress, texts: BatchPrompts,
                     controls: Controls | None = None) -> list[Image.Image]:
    """The request's prompt as an edit of `p2p_source`: both sampled from the same noise, the edit borrowing the
    source's attention maps for the first steps (see `pipelines.p2p`). Returns the edited images."""
    count = len(seeds)
    pair = BatchPrompts([request.p2p_source] * count + texts.prompts, texts.negatives * 2,
                        texts.cfg_scale if not isinstance(texts.cfg_scale, torch.Tensor) else texts.cfg_scale.repeat(2))
    guidance = guidance_for(encoder, request, pair)
    if not guidance.plain:
        raise InvalidRequest("prompt-to-prompt edits take single prompts (no AND)")
    rows = paired_rows(guidance.row_images(), guidance.row_is_negative(), 2 * count)
    edit = AttentionEdit(rows, round(request.p2p_cross * request.steps), round(request.p2p_self * request.steps))
    with seamless_tiling(model, request.tile), edit_attention(model.pipe.unet, edit):
        control = _control_set(model, controls, request.width, request.height, 2 * count)
        latents = first_pass(model, request, guidance, seeds + seeds, subseeds + subseeds, None,
                             _CountingProgress(progress, edit), control)
        pixels = decode_latents(model, latents[count:])
    return to_pil(pixels)


def _control_set(model: LoadedModel, controls: Controls | None, width: int, height: int,
                 count: int) -> ControlSet | None:
    if controls is None or not (controls.units or controls.ip_images):
        return None
    embeds = image_embeds(model.pipe, controls.ip_images, count) if controls.ip_images else None
    return ControlSet(controls.units, width, height, model.device, model.dtype, embeds)


def scheduler_for(model: LoadedModel, request: GenerationRequest, seed: int):
    config = model.scheduler_config
    if request.prediction_type:
        config = {**config, "prediction_type": request.prediction_type}
    return make_scheduler(request.sampler, config, seed, timestep_spacing=request.timestep_spacing)


def step_cache_settings(request: GenerationRequest) -> StepCacheSettings | None:
    if request.cache_interval <= 1:  # (prompt-to-prompt and caching are refused together by the request's checks)
        return None
    return StepCacheSettings(request.cache_interval, request.cache_branch)


def first_pass(model: LoadedModel, request: GenerationRequest, guidance: Guidance, seeds: list[int],
               subseeds: list[int], source: Source | None, progress: Progress,
               control: ControlSet | None = None, strengths: list[float] | None = None) -> torch.Tensor:
    """The first denoising pass; `strengths`: each image's subseed strength (default: the request's)."""
    scheduler = scheduler_for(model, request, seeds[0])
    noise, generators = initial_noise(model, request.width, request.height, seeds, subseeds,
                                      request.subseed_strength if strengths is None else strengths)
    strength = 1.0 if source is None else request.strength
    timesteps = set_timesteps(scheduler, request.steps, strength, model.device)
    inpaint = None
    if source is None:
        latents = noise * scheduler.init_noise_sigma
    else:
        init_latents = encode_images(model, from_pil([source.image])).repeat(len(seeds), 1, 1, 1)
        if len(timesteps) == 0:
            return init_latents
        inpaint = _inpaint_state(model, source, init_latents, noise)
        if strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(len(seeds)))
    progress.add_total(len(timesteps))
    return denoise(model, scheduler, latents, timesteps, guidance, generators, request.width, request.height, inpaint,
                   progress.step, control, request.eta, step_cache_settings(request), request.token_merging_ratio,
                   consistent=request.consistent)


def _inpaint_state(model: LoadedModel, source: Source, init_latents: torch.Tensor,
                   noise: torch.Tensor) -> InpaintState | None:
    if source.mask is None:
        return None
    batch, _, h, w = init_latents.shape
    mask = from_pil([source.mask.convert("RGB")])[:, :1] * 0.5 + 0.5  # [1, 1, H, W] in [0, 1]
    if model.pipe.unet.config.in_channels == 9:  # inpainting checkpoint: binary mask + masked image as input
        binary = (mask >= 0.5).float()
        masked = from_pil([source.image]) * (binary < 0.5)
        masked_latents = encode_images(model, masked).repeat(batch, 1, 1, 1)
        latent_mask = F.interpolate(binary, size=(h, w)).to(model.device, model.dtype).repeat(batch, 1, 1, 1)
        return InpaintState(latent_mask, init_latents, noise, masked_latents)
    latent_mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
    return InpaintState(latent_mask.to(model.device, model.dtype).repeat(batch, 1, 1, 1), init_latents, noise)


def hires_size(request: GenerationRequest) -> tuple[int, int]:
    return (int(round(request.width * request.hires_scale / 8)) * 8,
            int(round(request.height * request.hires_scale / 8)) * 8)


def hires_pass(model: LoadedModel, request: GenerationRequest, guidance: Guidance, latents: torch.Tensor,
               seeds: list[int], subseeds: list[int], progress: Progress, control: ControlSet | None = None,
               upscaler_for: UpscalerFor | None = None, strengths: list[float] | None = None
               ) -> tuple[torch.Tensor, int, int]:
    """Upscale the first pass (in latent or pixel space) and refine it with img2img."""
    width, height = hires_size(request)
    scale = model.vae_scale
    if request.hires_upscaler.startswith("latent"):
        mode = "nearest" if request.hires_upscaler == "latent-nearest" else "bilinear"
        upscaled = F.interpolate(latents.float(), size=(height // scale, width // scale), mode=mode).to(model.dtype)
    else:
        upscaler = upscaler_for(request.hires_upscaler)
        pictures = [upscale(p, upscaler, width, height) for p in to_pil(decode_latents(model, latents))]
        upscaled = encode_images(model, from_pil(pictures))
    scheduler = scheduler_for(model, request, seeds[0])
    noise, generators = initial_noise(model, width, height, seeds, subseeds,
                                      request.subseed_strength if strengths is None else strengths)
    timesteps = set_timesteps(scheduler, request.hires_steps or request.steps, request.hires_strength, model.device)
    if len(timesteps) == 0:
        return upscaled, width, height
    noisy = scheduler.add_noise(upscaled, noise, timesteps[:1].repeat(len(seeds)))
    progress.add_total(len(timesteps))
    refined = denoise(model, scheduler, noisy, timesteps, guidance, generators, width, height, None, progress.step,
                      control, request.eta, step_cache_settings(request), request.token_merging_ratio, hires=True)
    return refined, width, height
