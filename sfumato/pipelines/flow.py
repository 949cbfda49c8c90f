"""SD3 and FLUX.1 (flow matching, transformer) txt2img through their diffusers pipelines, with sfumato's
seeds and progress.

The noise is drawn like every other family's (CPU, per-image seeds, variation seeds) and handed to the
pipeline as `latents` (packed 2x2 for FLUX), so seeds replay exactly. Prompts go to the pipeline's own
encoders as plain text (SD3: CLIP-L + CLIP-G, and T5 when present; FLUX: CLIP-L + T5): A1111 emphasis
syntax is not applied to these families. FLUX's cfg_scale is its distilled guidance; it has no negative prompt.
"""

from __future__ import annotations

from PIL import Image

from sfumato.errors import UnsupportedModel
from sfumato.models.loader import LoadedModel
from sfumato.prompts.schedule import has_syntax
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for
from sfumato.sampling.samplers import make_scheduler


def check_flow_request(family: str, request: GenerationRequest) -> None:
    """Refuse what the flow pipelines do not do yet, before any work."""
    if family == "flux" and request.negative_prompt:
        raise UnsupportedModel("FLUX models take no negative prompt (guidance is distilled); remove it")
    unsupported = [name for name, used in (("init image / inpainting", request.init_image),
                                           ("hires fix", request.hires_scale > 1.0), ("tiling", request.tile))
                   if used]
    if unsupported:
        raise UnsupportedModel(f"{family} supports txt2img only for now, not {', '.join(unsupported)}")
    if has_syntax(request.prompt) or has_syntax(request.negative_prompt):
        raise UnsupportedModel(f"{family} prompts go to its own text encoders as plain text: prompt editing, "
                               "alternation and AND are not supported there (styles and dynamic prompts are)")


def generate_flow_batch(model: LoadedModel, request: GenerationRequest, seeds: list[int], subseeds: list[int],
                        progress, prompts: list[str] | None = None) -> list[Image.Image]:
    """One batch through the diffusers SD3/FLUX pipeline; `prompts` are the images' own (dynamic) prompts."""
    pipe = model.pipe
    scale = model.vae_scale
    flux = model.family == "flux"
    channels = pipe.vae.config.latent_channels if flux else pipe.transformer.config.in_channels
    height, width = request.height // scale, request.width // scale
    if flux and (height % 2 or width % 2):
        raise UnsupportedModel(f"FLUX sizes must be multiples of {2 * scale} px")
    noise = batch_noise((channels, height, width), generators_for(seeds), subseeds, request.subseed_strength)
    if flux:
        noise = pipe._pack_latents(noise, len(seeds), channels, height, width)
    pipe.scheduler = make_scheduler(request.sampler, model.scheduler_config, seeds[0], flow=True)
    progress.add_total(request.steps)

    def on_step(_pipe, _index, _timestep, _tensors):
        progress.step()  # packed/sequence latents: no preview
        return {}

    count = len(seeds)
    extra = {} if flux else {"negative_prompt": [request.negative_prompt] * count}
    return pipe(prompt=prompts or [request.prompt] * count, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                height=request.height, width=request.width, latents=noise.to(model.device, model.dtype),
                callback_on_step_end=on_step, output_type="pil", **extra).images
