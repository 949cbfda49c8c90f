"""DiT families through their diffusers pipelines, with sfumato's seeds and progress: PixArt-α/Σ (T5-conditioned
transformer with learned sigma) and class-conditional DiT (ImageNet labels as prompts).

PixArt: the noise is drawn by sfumato (per-image seeds, variation seeds) and passed as `latents`, the sampler is any
of ours (`make_scheduler`), the size is the request's (no resolution binning). DiT: the pipeline draws the noise from
one CPU generator per image seeded by the image's seed (it takes no latents); the prompt names an ImageNet class (a
label such as `"golden retriever"` or a class number; dynamic prompts `{cat|dog}` vary it per image), the size is
the model's.
"""

from __future__ import annotations

import torch
from PIL import Image

from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.loader import LoadedModel
from sfumato.prompts.schedule import has_syntax
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for
from sfumato.sampling.samplers import make_scheduler


def check_txt2img_only(family: str, request: GenerationRequest) -> None:
    """Refuse what the txt2img-only pipeline families (DiT, PixArt, VQ) do not do, before any work."""
    unsupported = [name for name, used in (("init image / inpainting", request.init_image),
                                           ("hires fix", request.hires_scale > 1.0), ("tiling", request.tile),
                                           ("SD upscale", request.sd_upscale > 1.0),
                                           ("ControlNet units", bool(request.controls)),
                                           ("IP-Adapter", bool(request.ip_adapter)), ("LoRAs", bool(request.loras)),
                                           ("step caching / token merging", request.cache_interval > 1 or
                                            request.cache_threshold > 0 or request.token_merging_ratio > 0),
                                           ("prompt editing / AND", has_syntax(request.prompt) or
                                            has_syntax(request.negative_prompt)))
                   if used]
    if unsupported:
        raise UnsupportedModel(f"{family} models do txt2img only for now, not {', '.join(unsupported)}")


def check_dit_request(family: str, request: GenerationRequest) -> None:
    """Refuse what these pipelines do not do, before any work."""
    check_txt2img_only(family, request)
    if family == "dit":
        if request.negative_prompt:
            raise UnsupportedModel("DiT models are class-conditional: no negative prompt")
        if request.subseed_strength > 0:
            raise UnsupportedModel("DiT's pipeline draws its own noise: no variation seeds")


def generate_dit_batch(model: LoadedModel, request: GenerationRequest, seeds: list[int], subseeds: list[int],
                       progress, prompts: list[str] | None = None) -> list[Image.Image]:
    """One batch through the PixArt or DiT pipeline; `prompts` are the images' own (dynamic) prompts."""
    pipe = model.pipe
    prompts = prompts or [request.prompt] * len(seeds)
    pipe.scheduler = make_scheduler(request.sampler, model.scheduler_config, seeds[0])
    progress.add_total(request.steps)
    if model.family == "dit":
        return _dit(model, request, seeds, prompts, progress)
    scale = model.vae_scale
    channels = pipe.transformer.config.in_channels
    noise = batch_noise((channels, request.height // scale, request.width // scale), generators_for(seeds), subseeds,
                        request.subseed_strength)
    return pipe(prompt=prompts, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                guidance_scale=request.cfg_scale, height=request.height, width=request.width,
                latents=noise.to(model.device, model.dtype), use_resolution_binning=False, output_type="pil",
                callback=lambda *_: progress.step(), callback_steps=1).images


def dit_size(model: LoadedModel) -> int:
    """The one image size a DiT model makes (its latent size times the VAE's factor)."""
    return int(model.pipe.transformer.config.sample_size) * model.vae_scale


def class_ids(pipe, prompts: list[str]) -> list[int]:
    """ImageNet class ids of the prompts (each a label the model knows, any of its comma-separated synonyms)."""
    labels = {name.strip().lower(): int(index) for name, index in pipe.labels.items()}
    ids = []
    for prompt in prompts:
        key = prompt.strip().lower()
        if key.isdigit() and int(key) in labels.values():
            ids.append(int(key))
        elif key in labels:
            ids.append(labels[key])
        else:
            near = sorted(name for name in labels if key and (key in name or name in key))[:3]
            raise InvalidRequest(f"{prompt!r} is not a class of this DiT model (a label such as "
                                 f"{', '.join(repr(n) for n in near or sorted(labels)[:3])}, or a class number)")
    return ids


def _dit(model: LoadedModel, request: GenerationRequest, seeds: list[int], prompts: list[str], progress):
    pipe = model.pipe
    size = dit_size(model)
    if (request.width, request.height) != (size, size):
        raise UnsupportedModel(f"this DiT model makes {size}x{size} images only (--width/--height {size})")
    ids = class_ids(pipe, prompts)
    images = pipe(class_labels=ids, guidance_scale=request.cfg_scale, num_inference_steps=request.steps,
                  generator=[torch.Generator().manual_seed(seed) for seed in seeds], output_type="pil").images
    for _ in range(request.steps):  # the pipeline has no step callback: the steps are reported when they are done
        progress.step()
    return images
