"""SD3 and FLUX.1 (flow matching, transformer) through their diffusers pipelines, with sfumato's seeds and progress:
txt2img, img2img, inpainting and outpainting (the Img2Img / Inpaint pipelines built from the loaded components; a
FLUX.1 Fill model, told apart by its transformer's extra mask and masked-image input channels, inpaints and outpaints
through FluxFillPipeline; its distilled guidance wants a high cfg_scale, 30 in BFL's examples).

txt2img noise is drawn like every other family's (CPU, per-image seeds, variation seeds) and handed to the
pipeline as `latents` (packed 2x2 for FLUX), so seeds replay exactly. Edits pass one CPU generator per image seeded
with the image's seed (the pipeline encodes the init image and draws the noise from it), so an edit equals the plain
diffusers pipeline with those generators; variation seeds are refused there. Masks are blurred and outpaint
canvases built as for the UNet families, and the original is pasted back outside the mask. Plain prompts go to the pipeline's own
encoders (SD3: CLIP-L + CLIP-G, and T5 when present; FLUX: CLIP-L + T5); prompts with A1111 emphasis, prompt
editing or alternation are encoded per scheduled text by `prompts.flow_encode` (the same features, emphasis applied)
and handed to the pipeline per step (`ScheduledEmbeddings`).
FLUX's cfg_scale is its distilled guidance; it has no negative prompt.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from PIL import Image

from sfumato.errors import UnsupportedModel
from sfumato.models.families import FAMILIES, FlowFamily
from sfumato.models.loader import LoadedModel
from sfumato.models.lora import takes_loras
from sfumato.prompts.flow_encode import flux_features, has_emphasis, plain_text, sd3_features
from sfumato.prompts.schedule import has_syntax, prompt_schedule, split_and, text_at
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for
from sfumato.sampling.samplers import make_scheduler, sampler_names
from sfumato.speed.blockcache import block_cache_for


# how each family's pipelines are driven: the `flow` spec of its entry in models.families
FLOW_FAMILIES: dict[str, FlowFamily] = {f.name: f.flow for f in FAMILIES.values() if f.flow is not None}


def takes_reference(family: str) -> bool:
    """Whether the family's pipeline edits a reference image by instruction (FLUX.1 Kontext)."""
    return family in FLOW_FAMILIES and FLOW_FAMILIES[family].reference


def check_flow_request(family: str, request: GenerationRequest) -> None:
    """Refuse what the flow pipelines do not do yet, before any work."""
    spec = FLOW_FAMILIES[family]
    samplers = spec.samplers or tuple(sampler_names(spec.flow))
    if request.sampler not in samplers:
        raise UnsupportedModel(f"sampler {request.sampler!r} does not fit {family}'s pipeline (it schedules its own "
                               f"sigmas); choose one of: {', '.join(samplers)}")
    if request.loras and not takes_loras(family):
        raise UnsupportedModel(f"{family} has no LoRA loader in diffusers yet; remove the LoRAs")
    if request.reference_image and not spec.reference:
        raise UnsupportedModel(f"a reference image is for FLUX.1 Kontext models (they edit it by instruction), not "
                               f"{family}")
    if spec.reference and request.init_image:
        raise UnsupportedModel(f"{family} edits its reference image by instruction (no denoising strength); give the "
                               "image as reference_image (an init image without a mask is taken as one)")
    if request.init_image and not spec.edits:
        raise UnsupportedModel(f"{family} has no img2img or inpainting pipeline in diffusers; txt2img only")
    if request.init_image and (request.mask or request.outpaint) and True not in spec.edits and spec.fill is None:
        raise UnsupportedModel(f"{family} has no inpainting pipeline in diffusers; img2img works")
    if spec.noise == "generators" and request.subseed_strength > 0:
        raise UnsupportedModel(f"{family}'s pipeline draws its own noise (one generator per image seed): variation "
                               "seeds need noise drawn by sfumato; use seeds")
    if not spec.negative and request.negative_prompt:
        raise UnsupportedModel(f"{family.upper()} models take no negative prompt (guidance is distilled); remove it")
    if spec.control is None and request.controls:
        raise UnsupportedModel(f"{family} has no ControlNet pipeline; remove the control units")
    if not spec.markup and any(has_syntax(t) or has_emphasis(t) for t in (request.prompt, request.negative_prompt)):
        raise UnsupportedModel(f"{family} takes plain prompts for now (no emphasis weights or prompt editing); styles "
                               "and dynamic prompts work")
    unsupported = [name for name, used in (("colorize / init upscaler", request.colorize or request.init_upscaler),
                                           ("hires fix of an edit", request.hires_scale > 1.0 and request.init_image),
                                           ("tiling", request.tile),
                                           ("SD upscale", request.sd_upscale > 1.0),
                                           ("ControlNet units with an init image or hires fix",
                                            bool(request.controls) and (request.init_image or request.hires_scale > 1)),
                                           ("IP-Adapter", bool(request.ip_adapter)),
                                           ("token merging", request.token_merging_ratio > 0))
                   if used]
    if unsupported:
        raise UnsupportedModel(f"{family} does not support {', '.join(unsupported)} yet (txt2img with ControlNets, "
                               "img2img, inpainting, outpainting and hires fix work)")
    if spec.control is not None and spec.control[1] is None and len(request.controls or []) > 1:
        raise UnsupportedModel(f"{family}'s ControlNet pipeline takes one control unit")
    for index, unit in enumerate(request.controls or []):
        if not spec.control_windows and (unit.get("guidance_start", 0.0) != 0.0 or unit.get("guidance_end", 1.0) != 1.0):
            raise UnsupportedModel(f"control unit {index}: {family}'s ControlNet pipeline applies over every step "
                                   "(no guidance start/end)")
        if unit.get("control_mode", "balanced") != "balanced" or unit.get("effective_region_mask"):
            raise UnsupportedModel(f"control unit {index}: control_mode and effective_region_mask are for UNet "
                                   f"ControlNets; {family} ControlNets take weight and guidance start/end")
    if request.init_image and request.subseed_strength > 0:
        raise UnsupportedModel(f"{family} edits (init image) take no variation seeds yet")
    if any(len(split_and(text)) > 1 for text in (request.prompt, request.negative_prompt)):
        raise UnsupportedModel(f"{family} does not support AND (composable diffusion) yet; prompt editing, "
                               "alternation, styles and dynamic prompts work")


def edit_steps(steps: int, strength: float) -> int:
    """The denoising steps an img2img pass of `steps` at `strength` runs (diffusers' `get_timesteps`)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))


def generate_flow_batch(model: LoadedModel, request: GenerationRequest, seeds: list[int], subseeds: list[int],
                        progress, prompts: list[str] | None = None, upscaler_for=None,
                        controls: list | None = None) -> list[Image.Image]:
    """One batch through the diffusers SD3/FLUX pipeline; `prompts` are the images' own (dynamic) prompts. A hires
    fix upscales the first pass's images (in pixels: "latent" upscalers mean bicubic here, any upscaler name works)
    and refines them with the Img2Img pipeline at `hires_strength`."""
    import dataclasses

    images = _flow_pass(model, request, seeds, subseeds, progress, prompts, controls=controls)
    if request.hires_scale <= 1.0 or request.init_image:
        return images
    from sfumato.pipelines.tasks import hires_size
    from sfumato.upscale.upscalers import upscale

    width, height = hires_size(request)
    if request.hires_upscaler.startswith("latent"):
        mode = Image.Resampling.NEAREST if request.hires_upscaler == "latent-nearest" else Image.Resampling.BICUBIC
        upscaled = [image.resize((width, height), mode) for image in images]
    else:
        upscaler = upscaler_for(request.hires_upscaler)
        upscaled = [upscale(image, upscaler, width, height) for image in images]
    second = dataclasses.replace(request, width=width, height=height, steps=request.hires_steps or request.steps,
                                 strength=request.hires_strength, hires_scale=1.0, subseed_strength=0.0)
    return _flow_pass(model, second, seeds, subseeds, progress, prompts, upscaled)


def _flow_pass(model: LoadedModel, request: GenerationRequest, seeds: list[int], subseeds: list[int], progress,
               prompts: list[str] | None, init: list[Image.Image] | None = None, controls: list | None = None
               ) -> list[Image.Image]:
    """One pass: txt2img (with the units' ControlNets when `controls` has any), or an edit of the request's init image
    (or of `init`, one picture per image)."""
    from sfumato.pipelines.tasks import Source, finish, prepare_source

    source = prepare_source(request) if init is None else Source(init[0], None)
    pipe = model.pipe
    scale = model.vae_scale
    spec = FLOW_FAMILIES[model.family]
    multiple = scale * spec.multiple
    if request.height % multiple or request.width % multiple:
        raise UnsupportedModel(f"{model.family} sizes must be multiples of {multiple} px")
    height, width = request.height // scale, request.width // scale
    pipe.scheduler = make_scheduler(request.sampler, model.scheduler_config, seeds[0], flow=spec.flow)
    fill = spec.fill is not None and pipe.transformer.config.in_channels > 4 * pipe.vae.config.latent_channels
    if fill and (source is None or source.mask is None):
        raise UnsupportedModel("FLUX Fill models inpaint and outpaint: give an init image with a mask (or --outpaint)")
    inputs: dict = dict(spec.call)
    if source is None:
        if spec.noise == "ours":
            channels = pipe.vae.config.latent_channels if spec.packed else pipe.transformer.config.in_channels
            noise = batch_noise((channels, height, width), generators_for(seeds), subseeds, request.subseed_strength)
            if spec.packed:
                noise = pipe._pack_latents(noise, len(seeds), channels, height, width)
            inputs["latents"] = noise.to(model.device, model.dtype)
        else:  # the pipeline draws it, in its own layout, from a generator per image seed
            inputs["generator"] = [torch.Generator().manual_seed(seed) for seed in seeds]
        if request.reference_image:  # fitted to the output size (BFL's pipeline would pick a preferred resolution)
            from sfumato.pipelines.images import load_image

            reference = load_image(request.reference_image, "reference image").convert("RGB")
            reference = reference.resize((request.width, request.height), Image.Resampling.LANCZOS)
            inputs["image"] = reference  # one reference for the batch (a list would be read as several)
        if spec.reference:  # Kontext scales the output to `max_area` (1024² by default): the request's size
            inputs["max_area"] = request.width * request.height
        progress.add_total(request.steps)
        if controls:
            pipe, control_inputs = _control_pipeline(model, pipe, controls, request.width, request.height)
            inputs.update(control_inputs)
    else:  # img2img / inpaint / outpaint: the edit pipeline over the same components, a generator per image
        import diffusers

        name = spec.fill if fill else spec.edits[source.mask is not None]
        pipe = getattr(diffusers, name).from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
        inputs.update({"image": init or [source.image] * len(seeds), "strength": request.strength,
                       "generator": [torch.Generator().manual_seed(seed) for seed in seeds]})
        if source.mask is not None:
            inputs["mask_image"] = [source.mask] * len(seeds)
        progress.add_total(edit_steps(request.steps, request.strength))

    count = len(seeds)
    prompts = prompts or [request.prompt] * count
    negatives = [request.negative_prompt] * count
    scheduled = None
    if any(has_syntax(text) or has_emphasis(text) for text in (*prompts, request.negative_prompt)):
        scheduled = ScheduledEmbeddings(pipe, not spec.negative, prompts, negatives, request.steps,
                                        request.cfg_scale > 1)

    def on_step(_pipe, index, _timestep, _tensors):
        progress.step()  # packed/sequence latents: no preview
        return scheduled.step_outputs(index + 1) if scheduled is not None else {}

    if scheduled is not None:  # prompt editing / alternation: embeddings per step, through the step callback
        texts = scheduled.first_inputs()
    else:
        plain = [plain_text(text) for text in prompts]  # markup without weights (`(word:1.0)`, `\(`) is syntax
        texts = {"prompt": plain}
        if spec.negative:
            texts["negative_prompt"] = [plain_text(t) for t in negatives]
    # the edit and ControlNet pipelines let a callback change only the sequence embeddings (pooled vectors stay the
    # first step's)
    callback_inputs = [name for name in ("prompt_embeds", "pooled_prompt_embeds") if name in pipe._callback_tensor_inputs]
    with block_cache_for(pipe.transformer, request.cache_interval, request.cache_threshold), \
            torch.random.fork_rng(devices=[model.device.index or 0] if model.device.type == "cuda" else []):
        # the ControlNet pipelines sample the control image's VAE posterior from the global generator: seed it, so
        # a seed replays the same image (outside this block the process's random state is untouched)
        torch.manual_seed(seeds[0])
        with _area_of(pipe, request, scale, spec.area_sized):
            images = pipe(num_inference_steps=request.steps, height=request.height, width=request.width,
                          callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=callback_inputs,
                          output_type="pil", **{spec.cfg: request.cfg_scale}, **inputs, **texts).images
    return finish(request, images, source)


@contextmanager
def _area_of(pipe, request: GenerationRequest, scale: int, sized: bool):
    """HiDream's pipeline scales every image to `default_sample_size`'s area: set it to the request's for the call."""
    if not sized:
        yield
        return
    before = pipe.default_sample_size
    pipe.default_sample_size = math.sqrt(request.width * request.height) / scale * (1 + 1e-9)  # no rounding down
    try:
        yield
    finally:
        pipe.default_sample_size = before


def _control_pipeline(model: LoadedModel, pipe, controls: list, width: int, height: int):
    """The family's diffusers ControlNet pipeline over the loaded components, and its control inputs: one map per
    unit (preprocessed as for UNet ControlNets), its weight and guidance start/end."""
    import diffusers

    from sfumato.control.apply import control_map
    from sfumato.control.models import FLOW_KINDS

    for unit, control in controls:
        if FLOW_KINDS.get(control.kind) != model.family:
            raise UnsupportedModel(f"control model {control.name} ({control.kind}) does not fit a {model.family} model: "
                                   f"it needs a {model.family.upper()} ControlNet")
    pipeline, multi = FLOW_FAMILIES[model.family].control
    nets = [control.module for _, control in controls]
    net = nets[0] if len(nets) == 1 else getattr(diffusers, multi)(nets)
    maps = [control_map(unit, width, height) for unit, _ in controls]
    one = len(controls) == 1
    inputs = {"control_image": maps[0] if one else maps,
              "controlnet_conditioning_scale": controls[0][0].weight if one else [u.weight for u, _ in controls]}
    if FLOW_FAMILIES[model.family].control_windows:
        inputs.update(control_guidance_start=[u.guidance_start for u, _ in controls],
                      control_guidance_end=[u.guidance_end for u, _ in controls])
    control_pipe = getattr(diffusers, pipeline).from_pipe(pipe, controlnet=net)
    control_pipe.set_progress_bar_config(disable=True)
    return control_pipe, inputs


class ScheduledEmbeddings:
    """Emphasis, prompt editing and alternation for the diffusers SD3/FLUX pipelines: every scheduled text is encoded
    once (`prompts.flow_encode`: the pipeline's features with A1111 emphasis), and the step callback swaps in the next
    step's embeddings (A1111 schedule).
    FLUX's pipeline lets a callback change only the T5 sequence, so its pooled CLIP vector stays the first step's."""

    def __init__(self, pipe, flux: bool, prompts: list[str], negatives: list[str], steps: int, guided: bool):
        self.pipe, self.flux, self.guided = pipe, flux, guided and not flux
        self.positive = [prompt_schedule(text, steps) for text in prompts]
        self.negative = [prompt_schedule(text, steps) for text in negatives]
        self._encoded: dict[str, tuple] = {}

    def _encode(self, text: str) -> tuple:
        if text not in self._encoded:  # the pipeline's features, with A1111 emphasis (prompts.flow_encode)
            self._encoded[text] = (flux_features if self.flux else sd3_features)(self.pipe, text)
        return self._encoded[text]

    def _rows(self, schedules: list, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._encode(text_at(schedule, step)) for schedule in schedules]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def first_inputs(self) -> dict:
        embeds, pooled = self._rows(self.positive, 0)
        out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if not self.flux:
            out["negative_prompt_embeds"], out["negative_pooled_prompt_embeds"] = self._rows(self.negative, 0)
        return out

    def step_outputs(self, step: int) -> dict:
        """What the pipeline's loop uses from `step` on (it concatenates negatives first when guided)."""
        embeds, pooled = self._rows(self.positive, step)
        if self.flux:
            return {"prompt_embeds": embeds}
        if self.guided:
            negative, negative_pooled = self._rows(self.negative, step)
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
