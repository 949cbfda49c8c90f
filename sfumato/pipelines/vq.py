"""Vector-quantised latent families through their diffusers pipelines, with sfumato's seeds, samplers and progress.

- LDM-VQ (CompVis' latent diffusion text-to-image: `LDMTextToImagePipeline`, a VQModel autoencoder, the LDMBert text
  encoder, a UNet): the noise is drawn by sfumato (per-image seeds, variation seeds) and passed as `latents`.
- Kandinsky 2.2 (`KandinskyV22CombinedPipeline`: a CLIP-space image prior, then a UNet decoding into MoVQ's latent
  space): one pipeline call per image, whose CPU generator, seeded by the image's seed, draws the prior's and the
  decoder's noise (the prior's 25 steps run at its own defaults; the sampler and steps are the decoder's).

Both pipelines feed the scheduler's raw latents to the UNet (no `scale_model_input`, no initial sigma), so only the
samplers whose noise scale is 1 (DDIM, PLMS, DPM++ 2M, UniPC, ...) are accepted; Euler-type samplers are refused.
txt2img only.
"""

from __future__ import annotations

import torch
from PIL import Image

from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.loader import LoadedModel
from sfumato.pipelines.dit import check_txt2img_only
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for
from sfumato.sampling.samplers import make_scheduler


def check_vq_request(family: str, request: GenerationRequest) -> None:
    """Refuse what these pipelines do not do, before any work."""
    check_txt2img_only(family, request)
    if family == "ldm-vq" and request.negative_prompt:
        raise UnsupportedModel("LDM-VQ's pipeline takes no negative prompt")
    if family == "kandinsky22" and request.subseed_strength > 0:
        raise UnsupportedModel("Kandinsky 2.2's pipeline draws its own noise: no variation seeds")
    scheduler = make_scheduler(request.sampler, {"num_train_timesteps": 1000})
    if float(scheduler.init_noise_sigma) != 1.0:
        raise InvalidRequest(f"{family}'s pipeline does not scale the model input, so sampler {request.sampler!r} "
                             "(noise scale above 1) would draw garbage: use DDIM, PLMS, DPM++ 2M or UniPC")


def generate_vq_batch(model: LoadedModel, request: GenerationRequest, seeds: list[int], subseeds: list[int],
                      progress, prompts: list[str] | None = None) -> list[Image.Image]:
    """One batch through the LDM-VQ or Kandinsky 2.2 pipeline; `prompts` are the images' own (dynamic) prompts."""
    pipe = model.pipe
    prompts = prompts or [request.prompt] * len(seeds)
    progress.add_total(request.steps * (len(seeds) if model.family == "kandinsky22" else 1))
    if model.family == "kandinsky22":
        # one image per call: the prior batches the negative prompts with the positive ones, so a generator list
        # would not line up with the images; a call per image keeps image k = seed + k whatever the batch
        images = []
        for seed, prompt in zip(seeds, prompts):
            pipe.scheduler = make_scheduler(request.sampler, dict(pipe.scheduler.config), seed)
            images += pipe(prompt=prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                           guidance_scale=request.cfg_scale, height=request.height, width=request.width,
                           generator=torch.Generator().manual_seed(seed),
                           callback_on_step_end=lambda *_: (progress.step(), {})[1], output_type="pil").images
        return images
    pipe.scheduler = make_scheduler(request.sampler, dict(pipe.scheduler.config), seeds[0])
    scale = 8  # LDMTextToImagePipeline's latent size is the image's / 8 whatever its autoencoder
    if 2 ** (len(pipe.vqvae.config.block_out_channels) - 1) != scale:
        raise UnsupportedModel("LDMTextToImagePipeline assumes an x8 autoencoder; this model's is not")
    if request.width % scale or request.height % scale:
        raise InvalidRequest(f"this model's sizes are multiples of {scale} px")
    noise = batch_noise((pipe.unet.config.in_channels, request.height // scale, request.width // scale),
                        generators_for(seeds), subseeds, request.subseed_strength)
    images = pipe(prompt=prompts, height=request.height, width=request.width, num_inference_steps=request.steps,
                  guidance_scale=request.cfg_scale, latents=noise.to(model.device, model.dtype), output_type="pil").images
    for _ in range(request.steps):  # the pipeline has no step callback: the steps are reported when they are done
        progress.step()
    return images
