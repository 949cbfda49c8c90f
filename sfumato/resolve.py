"""A request -> the resolved request the engine runs: prompt tags and flags applied, styles and dynamic prompts
expanded, the model's sampling defaults filled, random seeds drawn, names turned into files, and every budget and
per-family rule checked. Loads no weights: it reads the model's description (`ModelInfo`) and file headers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sfumato import upscale as upscalers
from sfumato.control import preprocessors
from sfumato.control.ip_adapter import resolve_adapter, resolve_encoder
from sfumato.control.models import controlnet_dir, embedded_controlnet
from sfumato.control.models import resolve as resolve_control
from sfumato.control.units import parse_units
from sfumato.errors import InvalidRequest, SfumatoError, UnsupportedModel
from sfumato.limits import Limits, check_pixels
from sfumato.models import home
from sfumato.models.info import ModelInfo
from sfumato.models.lora import check_loras
from sfumato.models.vae import is_own, resolve_vae
from sfumato.pipelines import images as imgs
from sfumato.pipelines.flow import takes_reference
from sfumato.pipelines.runners import runner_for
from sfumato.prompts.dynamic import apply_styles, has_dynamic, image_prompts
from sfumato.prompts.flags import size_for_aspect, split_flags, stylize_to_cfg
from sfumato.prompts.lora_tags import extract_lora_tags
from sfumato.prompts.schedule import has_syntax
from sfumato.requests import LATENT_UPSCALERS, GenerationRequest
from sfumato.safety.policy import PromptPolicy
from sfumato.sampling.presets import lora_preset, model_settings, preset_settings
from sfumato.sampling.samplers import get_sampler

SHIPPED_MODULES = ("canny", "scribble", "threshold", "invert", "lineart", "softedge", "none")  # edge-like maps


class Resolver:
    """Resolves requests under one set of limits, one prompt policy and one rule for paths in prompt tags."""

    def __init__(self, limits: Limits, policy: PromptPolicy | None = None, paths: bool = True):
        self.limits, self.policy = limits, policy
        self.paths = paths  # LoRA tags in prompts may name files outside the models home (the CLI; never a server)

    def resolve(self, request: GenerationRequest, info: ModelInfo, video: bool = False) -> GenerationRequest:
        """A validated request for the model `info` describes -> the resolved request (see the module); `video`:
        the shared settings of a video model's clip."""
        self.limits.check_texts(request.texts())  # before any parser reads them
        if self.policy is not None:
            self.policy.check(request.prompt)
        family = info.family
        flow = family.prediction_type == "flow"
        transformer = family.denoiser != "unet"  # through its own diffusers pipeline (SD3, FLUX, PixArt, DiT, VQ)
        styled, negative = request.prompt, request.negative_prompt
        if request.template is None:  # not yet resolved (a replayed request keeps what it resolved to)
            styled, negative = apply_styles(request.prompt, request.negative_prompt, request.styles)
        prompt, tag_loras = extract_lora_tags(styled)
        tag_loras = [(self._tag_lora(name), weight) for name, weight in tag_loras]
        prompt, flags = split_flags(prompt)
        changes: dict = {"prompt": prompt, "negative_prompt": negative, "model": str(info.path),
                         "loras": [*request.loras, *tag_loras],
                         "vae": None if is_own(request.vae) else str(resolve_vae(request.vae))}
        preset, defaults = self._sampling_defaults(request, info, changes["loras"])
        changes["preset"] = preset
        changes["sampler"] = get_sampler(request.sampler or defaults.get("sampler") or family.default_sampler,
                                         flow).name
        steps = request.steps or defaults.get("steps") or family.default_steps
        if flags.quality is not None:
            steps = max(1, round(steps * flags.quality))
        changes["steps"] = steps
        changes["cfg_scale"] = next(v for v in (request.cfg_scale, defaults.get("cfg_scale"), family.default_cfg_scale)
                                    if v is not None)
        changes["timestep_spacing"] = request.timestep_spacing or defaults.get("timestep_spacing")
        changes["eta"] = request.eta if request.eta is not None else defaults.get("eta")
        if flags.stylize is not None:
            changes["cfg_scale"] = stylize_to_cfg(flags.stylize)
        if flags.no:
            changes["negative_prompt"] = ", ".join(p for p in (negative, flags.no) if p)
        if flags.seed is not None:
            changes["seed"] = flags.seed
        if flags.tile:
            changes["tile"] = True
        if flags.chaos is not None:
            changes["subseed_strength"] = flags.chaos / 100.0
        changes["width"], changes["height"] = self._size(request, info, flags.aspect_ratio)
        if info.dit_denoiser:
            used = [name for name, on in (("step caching", request.cache_interval > 1), ("token merging",
                    request.token_merging_ratio > 0), ("ControlNet units", bool(request.controls)),
                    ("IP-Adapter", bool(request.ip_adapter)), ("prompt-to-prompt", bool(request.p2p_source))) if on]
            if used:
                raise UnsupportedModel(f"{info.name} has a DiT denoiser: {', '.join(used)} need a UNet")
        instruct = info.instruct
        if request.instruction_edit and not instruct:
            raise InvalidRequest(f"{info.name} is not an InstructPix2Pix model (its UNet takes no image channels)")
        if instruct:
            if not request.init_image:
                raise InvalidRequest(f"{info.name} is an InstructPix2Pix model: it edits an image (--init-image)")
            changes["instruction_edit"] = True
        if (takes_reference(family.name) and request.init_image and not request.mask and not request.outpaint
                and not request.reference_image):  # A1111 img2img / OpenAI edits on FLUX.1 Kontext: edit by prompt
            changes.update(reference_image=request.init_image, init_image=None)
        resolved = dataclasses.replace(request, **changes).with_seeds_resolved().validate()
        if resolved.template is None and (request.styles or has_dynamic(resolved.prompt)):
            resolved = self._expand_dynamic(resolved, request.prompt)
        if resolved.controls:
            resolved = dataclasses.replace(resolved, controls=self._resolve_units(resolved, info))
        resolved = self._resolve_upscalers(resolved)
        self.limits.check_texts(resolved.texts())  # styles and wildcards expanded
        self.limits.check_generation(resolved.width, resolved.height, resolved.hires_scale, resolved.sd_upscale)
        if self.policy is not None:
            self.policy.check_texts(resolved.conditioning_texts())
        if resolved.reference_image:
            imgs.image_size(resolved.reference_image, "reference image")
        if resolved.ip_adapter:
            adapter = resolve_adapter(resolved.ip_adapter)
            resolve_encoder(adapter, resolved.ip_image_encoder)
            for index, path in enumerate(resolved.ip_images):
                imgs.image_size(path, f"IP-Adapter image {index}")
        for toward, away, _strength in resolved.directions:
            if any(has_syntax(t) or "<lora:" in t for t in (toward, away)):
                raise InvalidRequest("direction prompts are plain text (no AND, prompt editing or LoRA tags)")
        if transformer and resolved.directions:
            raise InvalidRequest("conditioning directions (and prompt travel) need a UNet model for now, "
                                 f"not {family.name}")
        runner = runner_for(family)
        if video != (runner.kind == "video"):
            raise UnsupportedModel(
                f"{info.name} is a {family.name} video model: make clips with `sfumato animate --mode video-model` "
                "(POST /api/v1/animations)" if not video else
                f"video-model mode needs a video model (Wan, LTX-Video, Stable Video Diffusion), not {family.name}")
        runner.check(family.name, resolved)
        if resolved.consistent > 0 and runner_for(family).kind != "unet":
            raise InvalidRequest(f"consistent batches share a UNet's self-attention: they need an SD1, SD2 or SDXL "
                                 f"model, not {family.name}")
        check_loras(resolved.loras)
        return resolved

    def _tag_lora(self, name: str) -> str:
        """A `<lora:NAME:W>` tag's file: any path for the CLI; for a server only a name inside the models home, with
        one answer whether a path is not allowed or not there."""
        if self.paths:
            return name
        return str(home.find_named(name, "lora"))

    def _sampling_defaults(self, request: GenerationRequest, info: ModelInfo,
                           loras: list[tuple[str, float]]) -> tuple[str | None, dict]:
        """The preset that fills the request's open sampling settings: the request's own, else the model's
        `sfumato.json`, else the preset a LoRA was distilled for (LCM-LoRA, Lightning, Hyper-SD, TCD)."""
        if request.preset:
            return request.preset, preset_settings(request.preset)
        folder = info.format == "diffusers"  # describe read a folder's sfumato.json (cached with the description)
        declared = model_settings(Path(info.path), info.settings if folder else None)
        if declared:
            return declared.pop("preset", None), declared
        for name, _weight in loras:
            try:
                path = home.resolve(name, "lora")
            except SfumatoError:
                continue  # check_loras reports it
            found = lora_preset(path)
            if found:
                return found, preset_settings(found)
        return None, {}

    def _resolve_upscalers(self, request: GenerationRequest) -> GenerationRequest:
        """Upscaler names as the registry spells them (so PNG metadata and replays agree); unknown ones fail now."""
        changes = {}
        if request.hires_upscaler.lower() in LATENT_UPSCALERS:
            changes["hires_upscaler"] = request.hires_upscaler.lower()
        elif request.hires_scale > 1 or request.hires_upscaler != "latent":
            changes["hires_upscaler"] = upscalers.find(request.hires_upscaler).name
        if request.init_upscaler:
            changes["init_upscaler"] = upscalers.find(request.init_upscaler).name
        if request.sd_upscale > 1:
            changes["sd_upscale_upscaler"] = upscalers.find(request.sd_upscale_upscaler).name
        return dataclasses.replace(request, **changes)

    def _resolve_units(self, request: GenerationRequest, info: ModelInfo) -> list[dict]:
        """Normalised units; a unit without a model gets the control model shipped for the embedded base model."""
        units = []
        for index, unit in enumerate(parse_units(request.controls)):
            size = imgs.image_size(unit.image, f"control unit {index} image")
            if unit.processor_res is not None and not unit.pixel_perfect:  # a map of this size will be made
                check_pixels(*preprocessors.short_side_size(size, unit.processor_res), self.limits.max_pixels,
                             f"control unit {index}'s map")
            if unit.is_reference:
                if runner_for(info.family).kind != "unet":
                    raise InvalidRequest(f"control unit {index} ({unit.module}) steers a UNet's self-attention: it "
                                         f"needs an SD1, SD2 or SDXL model, not {info.family.name}")
                units.append(unit.to_dict())
                continue
            if unit.model is None:
                shipped = embedded_controlnet(info.name)
                if shipped is None or unit.module not in SHIPPED_MODULES:
                    raise InvalidRequest(f"control unit {index} ({unit.module}) needs a model: put ControlNets in "
                                         f"{controlnet_dir()} and name one, or pass a path")
                unit.model = shipped.name
            resolve_control(unit.model)  # fail now, not after the first pass
            if unit.effective_region_mask:
                imgs.image_size(unit.effective_region_mask, f"control unit {index} effective region mask")
            units.append(unit.to_dict())
        return units

    def _expand_dynamic(self, resolved: GenerationRequest, template: str) -> GenerationRequest:
        """Keep the template; give each image its own resolved prompt (drawn with its seed, or all combinations)."""
        changes: dict = {"template": template}
        if has_dynamic(resolved.prompt):
            count = resolved.batch_size * resolved.batch_count
            prompts = image_prompts(resolved.prompt, [resolved.seed + k for k in range(count)], resolved.combinatorial)
            if resolved.combinatorial:  # every combination once; a last partial batch repeats from the start
                changes["batch_count"] = -(-len(prompts) // resolved.batch_size)
                prompts = [prompts[k % len(prompts)] for k in range(changes["batch_count"] * resolved.batch_size)]
            changes["image_prompts"] = prompts
        return dataclasses.replace(resolved, **changes).validate()

    def _size(self, request: GenerationRequest, info: ModelInfo, aspect: tuple[int, int] | None) -> tuple[int, int]:
        if aspect is not None:
            return size_for_aspect(aspect, info.native_size)
        if request.init_image and (request.width is None or request.height is None or request.outpaint):
            width, height = imgs.image_size(request.init_image, "init image")
            width += request.outpaint.get("left", 0) + request.outpaint.get("right", 0)
            height += request.outpaint.get("up", 0) + request.outpaint.get("down", 0)
            if not request.outpaint:
                width, height = request.width or width, request.height or height
            return max(8, width // 8 * 8), max(8, height // 8 * 8)
        native = info.native_size
        if info.family.name == "dit" and "transformer" in info.configs and "vae" in info.configs:
            # a DiT makes one size: its latent size times the VAE's factor
            native = info.configs["transformer"]["sample_size"] * 2 ** (
                len(info.configs["vae"].get("block_out_channels", [0] * 4)) - 1)
        return request.width or native, request.height or native
