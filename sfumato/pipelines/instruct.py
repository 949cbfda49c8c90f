"""InstructPix2Pix: edit an image by an instruction ("make it snowy") with an 8-channel UNet.

The UNet sees the noisy latents next to the (unscaled) latents of the input image. Three rows per image: the
instruction with the image, the negative prompt with the image, the negative prompt without it; they combine as

    uncond + cfg_scale * (text - image) + image_cfg_scale * (image - uncond)

(Brooks et al. 2023; A1111's "Image CFG Scale"). The output has the input image's size; sampling starts from noise.
"""

from __future__ import annotations

import inspect

import torch
from PIL import Image

from sfumato.errors import InvalidRequest
from sfumato.models.loader import LoadedModel
from sfumato.pipelines.steps import from_pil, initial_noise, set_timesteps


def is_instruct_model(model: LoadedModel) -> bool:
    unet, vae = model.pipe.unet.config, model.pipe.vae.config
    return unet.in_channels == 2 * vae.latent_channels and unet.out_channels != unet.in_channels


@torch.no_grad()
def instruct_latents(model: LoadedModel, request, guidance, scheduler, seeds: list[int], subseeds: list[int],
                     source: Image.Image, progress) -> torch.Tensor:
    """The latents of one batch of edits of `source` (already at the output size) by the request's prompt."""
    if not guidance.plain:
        raise InvalidRequest("instruction edits take one prompt (no AND)")
    count = len(seeds)
    vae = model.pipe.vae
    image = vae.encode(from_pil([source]).to(model.device, vae.dtype)).latent_dist.mode().to(model.dtype)
    image = image.repeat(count, 1, 1, 1)
    image_rows = torch.cat([image, image, torch.zeros_like(image)])
    noise, generators = initial_noise(model, request.width, request.height, seeds, subseeds, request.subseed_strength)
    timesteps = set_timesteps(scheduler, request.steps, 1.0, model.device)
    latents = noise * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generators} if takes_generator and len(generators) == count else {}
    progress.add_total(len(timesteps))
    for i, t in enumerate(timesteps):
        embeds = _rows(guidance, i, count)
        model_input = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        prediction = model.pipe.unet(torch.cat([model_input, image_rows], dim=1), t, encoder_hidden_states=embeds,
                                     return_dict=False)[0]
        text, with_image, uncond = prediction.chunk(3)
        prediction = (uncond + request.cfg_scale * (text - with_image)
                      + request.image_cfg_scale * (with_image - uncond))
        latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
        progress.step(latents)
    return latents


def _rows(guidance, step: int, count: int) -> torch.Tensor:
    """[instruction, negative, negative] embeddings for every image (the guidance's rows: negatives first)."""
    cond = guidance.at(step)
    if cond.embeds.shape[0] == count:  # cfg <= 1: the guidance dropped the negatives; encode them anyway
        raise InvalidRequest("instruction edits need cfg_scale > 1 (the text guidance)")
    negative, positive = cond.embeds[:count], cond.embeds[count:]
    return torch.cat([positive, negative, negative])
