"""The denoiser of one sampling step as composed layers (k-diffusion's shape): each concern wraps the model call.

A `Call` is `(model_input, t, step, kwargs) -> prediction` for the UNet's rows (an image's prompt parts and its
negative prompt are rows). `denoise` (in `steps`) composes, from the outside in:

    guided            latents -> rows, scaled model input; rows' predictions -> one guided prediction (CFG, AND)
    conditioned       the step's scheduled text conditioning (and SDXL's added conditioning, the ldm class label)
    guidance_embedded LCM's w-conditioning: cfg_scale embedded as `timestep_cond` instead of a CFG pass
    controlled        ControlNet residuals, T2I-Adapter features, IP-Adapter image embeddings
    referenced        reference-only units: the noised reference through the UNet first, its attention banked
    inpaint_channels  a 9-channel inpainting UNet's mask and masked-image latents
    hooked            step cache (DeepCache) and token merging (ToMe) bookkeeping before each call
    unet_call         the UNet itself (or a motion UNet denoising a clip's frames together)

and the sampler step, with `blend_known` putting the known region back after each step (inpainting with a plain
UNet). Every layer leaves the tensors and their order exactly as the single loop did (parity tests pin it).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch

from sfumato.models.loader import LoadedModel
from sfumato.pipelines.guidance import Guidance

Call = Callable[[torch.Tensor, torch.Tensor, int, dict], torch.Tensor]
Predict = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (latents, t, step) -> guided prediction
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]  # (prediction, t, latents, step)


def unet_call(unet) -> Call:
    return lambda model_input, t, step, kwargs: unet(model_input, t, return_dict=False, **kwargs)[0]


def hooked(call: Call, cache=None, tome=None) -> Call:
    """The step cache and token merging learn each call's input shape before it runs."""
    if cache is None and tome is None:
        return call

    def run(model_input, t, step, kwargs):
        if cache is not None:
            cache.before_call(tuple(model_input.shape))
        if tome is not None:
            tome.before_call(*model_input.shape[-2:])
        return call(model_input, t, step, kwargs)
    return run


def inpaint_channels(call: Call, concat: torch.Tensor | None) -> Call:
    """An inpainting UNet takes the mask and the masked image's latents as extra input channels."""
    if concat is None:
        return call
    return lambda model_input, t, step, kwargs: call(torch.cat([model_input, concat], dim=1), t, step, kwargs)


def controlled(call: Call, control, steps: int, guidance: Guidance) -> Call:
    """Control units (`control.apply.ControlSet`) add their residuals, features and image embeddings."""
    if control is None:
        return call
    negative_rows, row_list = guidance.row_is_negative(), guidance.row_images()

    def run(model_input, t, step, kwargs):
        kwargs = {**kwargs, **control.unet_kwargs(step, steps, model_input, t, kwargs["encoder_hidden_states"],
                                                  kwargs["added_cond_kwargs"], kwargs["class_labels"], negative_rows,
                                                  row_list)}
        return call(model_input, t, step, kwargs)
    return run


def referenced(call: Call, reference, steps: int) -> Call:
    """Reference-only control (`pipelines.reference.Reference`): at a step where a unit is active, its reference
    pass writes the self-attention banks (and AdaIN statistics) that the generation's call then reads."""
    if reference is None:
        return call

    def run(model_input, t, step, kwargs):
        reference.write(call, model_input, t, step, steps, kwargs)
        return call(model_input, t, step, kwargs)
    return run


def guidance_embedded(model, unet, guidance: Guidance, latents: torch.Tensor) -> tuple[Guidance, torch.Tensor | None]:
    """A UNet distilled with the guidance scale as an input (LCM, `time_cond_proj_dim`) gets cfg_scale embedded and
    runs without a CFG pass, as diffusers does: (the guidance to use, the `timestep_cond` rows or None)."""
    if getattr(unet.config, "time_cond_proj_dim", None) is None:
        return guidance, None
    scale = torch.as_tensor(guidance.cfg_scale, dtype=torch.float32).flatten().expand(guidance.images)
    guidance = dataclasses.replace(guidance, cfg_scale=1.0)
    embedding = model.pipe.get_guidance_scale_embedding(scale - 1, unet.config.time_cond_proj_dim)
    return guidance, embedding[torch.tensor(guidance.row_images())].to(latents.device, latents.dtype)


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


def conditioned(call: Call, model, unet, guidance: Guidance, width: int, height: int,
                timestep_cond: torch.Tensor | None = None) -> Call:
    """The text conditioning of each step (`Guidance.at`; built once when no prompt changes over the steps)."""
    negative_rows = guidance.row_is_negative()
    class_embedded = getattr(unet.config, "class_embed_type", None) is not None
    fixed: list = []

    def run(model_input, t, step, kwargs):
        if not fixed or not guidance.static:
            cond = guidance.at(step)
            added = added_conditioning(model, cond.pooled, negative_rows, width, height)
            fixed[:] = [cond.embeds, added, cond.pooled if class_embedded else None]  # ldm: pooled as class label
        context, added, class_labels = fixed
        return call(model_input, t, step, {**kwargs, "encoder_hidden_states": context, "added_cond_kwargs": added,
                                           "class_labels": class_labels, "timestep_cond": timestep_cond})
    return run


def guided(call: Call, scheduler, guidance: Guidance, device: torch.device) -> Predict:
    """Classifier-free (and composable) guidance: each image's rows in, one prediction per image out."""
    rows = torch.tensor(guidance.row_images(), device=device)

    def predict(latents, t, step):
        prediction = call(scheduler.scale_model_input(latents[rows], t), t, step, {})
        return guidance.combine(prediction)
    return predict


def sampler_step(scheduler, generators: list[torch.Generator], eta: float | None, images: int) -> Step:
    """The scheduler's step, with each image's generator (ancestral/SDE samplers) and eta where it takes them."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generators} if "generator" in parameters and len(generators) == images else {}
    if eta is not None and "eta" in parameters:
        kwargs["eta"] = eta
    return lambda prediction, t, latents, step: scheduler.step(prediction, t, latents, return_dict=False, **kwargs)[0]


def blend_known(sample: Step, scheduler, inpaint, timesteps: torch.Tensor) -> Step:
    """Inpainting with a plain UNet: after each step the unmasked region is the init image noised to the next level."""
    if inpaint is None or inpaint.masked_image_latents is not None:
        return sample

    def step(prediction, t, latents, i):
        latents = sample(prediction, t, latents, i)
        known = inpaint.init_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(inpaint.init_latents, inpaint.noise, timesteps[i + 1: i + 2])
        return (1 - inpaint.mask) * known + inpaint.mask * latents
    return step
