"""SD3 (flow matching, MMDiT) txt2img through the diffusers pipeline, with sfumato's seeds and progress.

The noise is drawn like every other family's (CPU, per-image seeds, variation seeds) and handed to the
pipeline as `latents`, so seeds replay exactly. Prompts go to the pipeline's own encoders as plain text
(CLIP-L + CLIP-G, and T5 when the model has it): A1111 emphasis syntax is not applied to this family.
"""

from __future__ import annotations

from PIL import Image

from sfumato.errors import UnsupportedModel
from sfumato.models.loader import LoadedModel
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for
from sfumato.sampling.samplers import make_scheduler


def check_flow_request(family: str, request: GenerationRequest) -> None:
    """Refuse what the flow pipelines do not do yet, before any work."""
    if family != "sd3":
        raise UnsupportedModel(f"{family} models are detected but cannot generate yet (only SD3 of the flow families)")
    unsupported = [name for name, used in (("init image / inpainting", request.init_image),
                                           ("hires fix", request.hires_scale > 1.0), ("tiling", request.tile))
                   if used]
    if unsupported:
        raise UnsupportedModel(f"{family} supports txt2img only for now, not {', '.join(unsupported)}")


def generate_flow_batch(model: LoadedModel, request: GenerationRequest, seeds: list[int], subseeds: list[int],
                        progress) -> list[Image.Image]:
    pipe = model.pipe
    scale = model.vae_scale
    shape = (pipe.transformer.config.in_channels, request.height // scale, request.width // scale)
    noise = batch_noise(shape, generators_for(seeds), subseeds, request.subseed_strength)
    pipe.scheduler = make_scheduler(request.sampler, model.scheduler_config, seeds[0], flow=True)
    progress.add_total(request.steps)

    def on_step(_pipe, _index, _timestep, _tensors):
        progress.step()
        return {}

    count = len(seeds)
    return pipe(prompt=[request.prompt] * count, negative_prompt=[request.negative_prompt] * count,
                num_inference_steps=request.steps, guidance_scale=request.cfg_scale, height=request.height,
                width=request.width, latents=noise.to(model.device, model.dtype), callback_on_step_end=on_step,
                output_type="pil").images
