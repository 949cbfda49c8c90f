"""The one public entry: `Engine(model).generate(request) -> GenerationResult`.

Used by the CLI, the server, the UI and any scale-out layer. It owns the loaded model (one at a
time, reused across requests: switching sampler or LoRA weights never reloads it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from sfumato.control.ip_adapter import (IPAdapterWeights, ip_adapter_loaded, load_ip_adapter_weights,
                                        resolve_adapter, resolve_encoder)
from sfumato.control.models import ControlModel, controlnet_dir, embedded_controlnet, load_control_model
from sfumato.control.models import resolve as resolve_control
from sfumato.control import preprocessors
from sfumato.control.units import ControlUnit, parse_units
from sfumato.errors import ImageBlocked, InvalidRequest, SfumatoError, UnsupportedModel
from sfumato.limits import LOCAL, Limits, OverBudget, check_pixels
from sfumato.models import home
from sfumato.models.detect import ModelInfo, describe
from sfumato.models.loader import LoadedModel, load_model
from sfumato.models.embeddings import apply_embeddings
from sfumato.models.lora import apply_loras, check_loras, lora_hashes
from sfumato.models.vae import apply_vae, is_own, resolve_vae
from sfumato.output import infotext
from sfumato.pipelines import images as imgs
from sfumato.pipelines.dit import check_dit_request, generate_dit_batch
from sfumato.pipelines.vq import check_vq_request, generate_vq_batch
from sfumato.pipelines.flow import check_flow_request, generate_flow_batch
from sfumato.pipelines.recipes import recipe_request
from sfumato.pipelines.tasks import BatchPrompts, Controls, generate_batch
from sfumato.prompts.encode import PromptEncoder
from sfumato.prompts.dynamic import apply_styles, has_dynamic, image_prompts
from sfumato.prompts.schedule import has_syntax, prompt_schedule, split_and
from sfumato.prompts.flags import size_for_aspect, split_flags, stylize_to_cfg
from sfumato.prompts.lora_tags import extract_lora_tags
from sfumato.requests import LATENT_UPSCALERS, GeneratedImage, GenerationRequest, GenerationResult, UpscaleRequest
from sfumato.safety.classifier import SafetySettings, nsfw_scores
from sfumato.safety.classifier import blur as blur_image
from sfumato.safety.policy import PromptPolicy
from sfumato.sampling.presets import lora_preset, model_settings, preset_settings
from sfumato.sampling.samplers import get_sampler, sampler_has_own_noise
from sfumato import upscale as upscalers

SHIPPED_MODULES = ("canny", "scribble", "threshold", "invert", "lineart", "softedge", "none")  # edge-like maps
ProgressCallback = Callable[[int, int], None]  # (steps done, steps known so far)
PreviewCallback = Callable[[torch.Tensor], None]  # the batch's latents after a step


class Interrupted(Exception):
    """Raised by a progress or preview callback to stop a generation between two steps."""


def default_model() -> str | None:
    """The model used when a request names none: `SFUMATO_MODEL`, else the embedded sfumato-emoji model."""
    import os

    from sfumato.models.embedded import embedded_model

    chosen = os.environ.get("SFUMATO_MODEL")
    if chosen:
        return chosen
    embedded = embedded_model()
    return str(embedded) if embedded else None


def _prompt_encoder(loaded: LoadedModel) -> PromptEncoder:
    """The prompt encoder of a loaded model (chunk length from its sfumato.json, 75 tokens by default)."""
    return PromptEncoder(loaded.pipe, loaded.family, int(loaded.info.settings.get("text_chunk_length", 75)))


class _Progress:
    def __init__(self, callback: ProgressCallback | None, preview: PreviewCallback | None = None):
        self.callback, self.preview, self.done, self.total = callback, preview, 0, 0

    def add_total(self, steps: int) -> None:
        self.total += steps
        if self.callback:
            self.callback(self.done, self.total)

    def step(self, latents: torch.Tensor | None = None) -> None:
        self.done += 1
        if self.callback:
            self.callback(self.done, self.total)
        if self.preview is not None and latents is not None:
            self.preview(latents)


class Engine:
    """Turns generation requests into images. `model` is the default for requests that name none."""

    def __init__(self, model: str | Path | None = None, device: str | None = None, dtype: str | None = None,
                 safety: SafetySettings | None = None, compile: str | None = None, memory=None,
                 limits: Limits | None = None, paths: bool = True):
        self.default_model = str(model) if model is not None else None
        self.limits = limits or LOCAL  # text, pixel and frame budgets of every request (the server passes its own)
        self.paths = paths  # LoRA tags in prompts may name files outside the models home (the CLI; never a server)
        self.device, self.dtype = device, dtype
        self.compile = compile  # torch.compile mode for every model this engine loads (speed.compiled), or None
        self.memory = memory  # low-memory modes and 8-bit weights for every model it loads (memory.MemorySettings)
        self.safety = safety or SafetySettings(mode="off")  # the library default: prompt policy on, image check off
        self._policy = None if self.safety.policy == "off" else PromptPolicy.load(self.safety.policy)
        self._loaded: LoadedModel | None = None
        self._encoder: PromptEncoder | None = None
        self._load_lock = threading.Lock()
        self._control_cache: dict[tuple[str, str, str], ControlModel] = {}
        self._ip_cache: tuple[tuple[str, ...], IPAdapterWeights] | None = None
        self._upscalers: dict[tuple[str, str], upscalers.Upscaler] = {}
        self._upscaler_lock = threading.Lock()

    @classmethod
    def with_model(cls, loaded: LoadedModel) -> "Engine":
        """An engine around an already loaded (e.g. in-training) model."""
        engine = cls(loaded.info.path, device=str(loaded.device))
        engine._loaded, engine._encoder = loaded, _prompt_encoder(loaded)
        return engine

    # ------------------------------------------------------------------ models

    def model_path(self, name: str | None) -> Path:
        name = name or self.default_model or default_model()
        if not name:
            raise InvalidRequest("no model given: pass --model PATH (a diffusers folder or .safetensors file)")
        return home.resolve(name, "checkpoint")

    def describe(self, name: str | None = None) -> ModelInfo:
        """Describe a model (family, format, native size) without loading its weights."""
        path = self.model_path(name)
        home.refuse_pickle(path)
        return describe(path)

    def load(self, name: str | None = None) -> LoadedModel:
        path = self.model_path(name)
        with self._load_lock:
            if self._loaded is None or self._loaded.info.path != path:
                self._loaded = None  # free the old model before loading the new one
                self._loaded = load_model(path, self.device, self.dtype)
                self._encoder = _prompt_encoder(self._loaded)
                if self.memory is not None and self.memory.active:
                    from sfumato.memory import apply_memory

                    self._loaded.memory = apply_memory(self._loaded.pipe, self.memory, self._loaded.device)
                if self.compile:
                    from sfumato.speed.compiled import compile_pipeline

                    compile_pipeline(self._loaded.pipe, self.compile)
            return self._loaded

    def token_counts(self, prompt: str, model: str | None = None, steps: int = 20) -> tuple[list[int], int, list[dict]]:
        """Tokens per chunk of `prompt` as the model's tokenizer splits it (flags and LoRA tags removed): the largest
        count over its AND parts and scheduled texts, the chunk length, and each scheduled text's own counts."""
        self.limits.check_text(prompt, "prompt")
        loaded = self.load(model)
        if loaded.info.family.denoiser != "unet":
            raise InvalidRequest("token counts are available for CLIP/BERT-conditioned (UNet) models")
        text, _ = extract_lora_tags(prompt)
        text, _ = split_flags(text)
        texts = []
        for part, weight in split_and(text):
            for end, scheduled in prompt_schedule(part, steps):
                counts, length = self._encoder.token_counts(scheduled)
                texts.append({"text": scheduled, "weight": weight, "until_step": end, "chunks": counts})
        largest = max(texts, key=lambda t: (sum(t["chunks"]), len(t["chunks"])))["chunks"]
        return largest, length, texts

    def schedule(self, resolved: GenerationRequest) -> dict:
        """What each pass will encode: per image prompt, its AND parts with weights and scheduled texts (--dry-run)."""
        def passes(text: str) -> dict:
            out = {"first_pass": [[end, t] for end, t in prompt_schedule(text, resolved.steps)]}
            if resolved.hires_scale > 1:
                hires = prompt_schedule(text, resolved.steps, resolved.hires_steps or resolved.steps)
                out["hires_pass"] = [[end, t] for end, t in hires]
            return out

        prompts = list(dict.fromkeys(resolved.image_prompts or [resolved.prompt]))
        return {"prompts": [{"prompt": p, "parts": [{"weight": w, **passes(t)} for t, w in split_and(p)]}
                            for p in prompts],
                "negative_prompt": passes(resolved.negative_prompt)}

    # ---------------------------------------------------------------- requests

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Apply prompt tags and flags, model defaults and random seeds; validate. Loads no weights."""
        request = dataclasses.replace(request).validate()
        self.limits.check_texts(request.texts())  # before any parser reads them
        if self._policy is not None:
            self._policy.check(request.prompt)
        info = self.describe(request.model)
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
        instruct = info.configs.get("unet", {}).get("in_channels") == 8
        if request.instruction_edit and not instruct:
            raise InvalidRequest(f"{info.name} is not an InstructPix2Pix model (its UNet takes no image channels)")
        if instruct:
            if not request.init_image:
                raise InvalidRequest(f"{info.name} is an InstructPix2Pix model: it edits an image (--init-image)")
            changes["instruction_edit"] = True
        resolved = dataclasses.replace(request, **changes).with_seeds_resolved().validate()
        if resolved.template is None and (request.styles or has_dynamic(resolved.prompt)):
            resolved = self._expand_dynamic(resolved, request.prompt)
        if resolved.controls:
            resolved = dataclasses.replace(resolved, controls=self._resolve_units(resolved, info))
        resolved = self._resolve_upscalers(resolved)
        self.limits.check_texts(resolved.texts())  # styles and wildcards expanded
        self.limits.check_generation(resolved.width, resolved.height, resolved.hires_scale, resolved.sd_upscale)
        if self._policy is not None:
            self._policy.check_texts(resolved.conditioning_texts())
        if resolved.ip_adapter:
            adapter = resolve_adapter(resolved.ip_adapter)
            resolve_encoder(adapter, resolved.ip_image_encoder)
            for index, path in enumerate(resolved.ip_images):
                imgs.load_image(path, f"IP-Adapter image {index}")
        for toward, away, _strength in resolved.directions:
            if any(has_syntax(t) or "<lora:" in t for t in (toward, away)):
                raise InvalidRequest("direction prompts are plain text (no AND, prompt editing or LoRA tags)")
        if transformer and resolved.directions:
            raise InvalidRequest("conditioning directions (and prompt travel) need a UNet model for now, "
                                 f"not {family.name}")
        if flow:
            check_flow_request(family.name, resolved)
        elif family.denoiser == "pipeline":
            check_vq_request(family.name, resolved)
        elif transformer:
            check_dit_request(family.name, resolved)
        elif resolved.cache_threshold > 0:
            raise InvalidRequest("cache_threshold (adaptive first-block cache) is for transformer models (SD3, FLUX); "
                                 "UNet models take cache_interval")
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

    def upscaler(self, name: str) -> upscalers.Upscaler:
        """A loaded upscaler, kept across requests (the three most recent), on the engine's device."""
        info = upscalers.find(name)
        device = str(self._loaded.device) if self._loaded is not None else (self.device or "cpu")
        key = (info.name, device)
        with self._upscaler_lock:
            if key not in self._upscalers:
                if len(self._upscalers) >= 3:
                    self._upscalers.pop(next(iter(self._upscalers)))
                self._upscalers[key] = upscalers.load(info, device)
            return self._upscalers[key]

    def upscale(self, image, request: UpscaleRequest):
        """Upscale one PIL image (A1111 "Extras"); returns the new image. Loads no diffusion model."""
        request = dataclasses.replace(request).validate()
        check_pixels(*image.size, self.limits.max_upload_pixels, "the image to upscale", OverBudget)
        size, (target_w, target_h) = upscalers.extras_sizes(image.size, request.scale, request.width, request.height,
                                                            request.crop)
        check_pixels(*size, self.limits.max_upscaled_pixels, "the upscaled image")
        out = upscalers.upscale(image, self.upscaler(request.upscaler), *size, request.tile, request.tile_overlap)
        if request.upscaler_2 and request.upscaler_2_visibility > 0:
            second = upscalers.upscale(image, self.upscaler(request.upscaler_2), *size, request.tile,
                                       request.tile_overlap)
            out = Image.blend(out, second, request.upscaler_2_visibility)
        if out.size != (target_w, target_h):  # crop the centre to the asked size (A1111 "crop to fit")
            left, top = (out.width - target_w) // 2, (out.height - target_h) // 2
            out = out.crop((left, top, left + target_w, top + target_h))
        return out

    def recipe(self, name: str, image: str, structure_model: str | None = None, **fields) -> GenerationRequest:
        """The request of an image recipe (colorize, restore, style; see `pipelines.recipes`). A style keeps the
        image's edges with a canny ControlNet: `structure_model`, else the model's shipped one, else none."""
        structure = True
        if name == "style" and not structure_model:
            structure = embedded_controlnet(self.describe(fields.get("model")).name) is not None
        return recipe_request(name, image, structure_model, structure, **fields)

    def _resolve_units(self, request: GenerationRequest, info: ModelInfo) -> list[dict]:
        """Normalised units; a unit without a model gets the control model shipped for the embedded base model."""
        units = []
        for index, unit in enumerate(parse_units(request.controls)):
            image = imgs.load_image(unit.image, f"control unit {index} image")
            if unit.processor_res is not None and not unit.pixel_perfect:  # a map of this size will be made
                check_pixels(*preprocessors.short_side_size(image.size, unit.processor_res), self.limits.max_pixels,
                             f"control unit {index}'s map")
            if unit.model is None:
                shipped = embedded_controlnet(info.name)
                if shipped is None or unit.module not in SHIPPED_MODULES:
                    raise InvalidRequest(f"control unit {index} ({unit.module}) needs a model: put ControlNets in "
                                         f"{controlnet_dir()} and name one, or pass a path")
                unit.model = shipped.name
            resolve_control(unit.model)  # fail now, not after the first pass
            if unit.effective_region_mask:
                imgs.load_image(unit.effective_region_mask, f"control unit {index} effective region mask")
            units.append(unit.to_dict())
        return units

    def control_models(self, request: GenerationRequest) -> list[tuple[ControlUnit, ControlModel]]:
        """The request's units with their loaded models (kept loaded across requests, keyed by path)."""
        model = self._loaded
        pairs = []
        for unit in parse_units(request.controls):
            path = resolve_control(unit.model)
            key = (str(path), str(model.device), str(model.dtype))
            if key not in self._control_cache:
                if len(self._control_cache) >= 4:
                    self._control_cache.pop(next(iter(self._control_cache)))
                self._control_cache[key] = load_control_model(path, model.device, model.dtype, unit.model)
            pairs.append((unit, self._control_cache[key]))
        return pairs

    def _ip_adapter_weights(self, adapter: Path, encoder: Path) -> IPAdapterWeights:
        """The adapter's weights and vision encoder, loaded once and kept (the last one used) across requests."""
        model = self._loaded
        key = (str(adapter), str(encoder), str(model.device), str(model.dtype))
        if self._ip_cache is None or self._ip_cache[0] != key:
            self._ip_cache = None  # free the old encoder first
            self._ip_cache = (key, load_ip_adapter_weights(adapter, encoder, model.device, model.dtype))
        return self._ip_cache[1]

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
            width, height = imgs.load_image(request.init_image, "init image").size
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

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None,
                 preview: PreviewCallback | None = None) -> GenerationResult:
        """Generate `batch_count` batches of `batch_size` images; image k uses seed + k (A1111).

        Raises `PromptBlocked` for a denied prompt and `ImageBlocked` when the safety check (mode
        `block`) withholds every image; withheld images are listed in `result.blocked`.
        """
        result = self._run(self.resolve(request), progress, preview)
        if not result.images and result.blocked:
            raise ImageBlocked("every image was withheld: " + "; ".join(result.blocked))
        return result

    def _prepare(self, requests: list[GenerationRequest]):
        """Load the model, activate the VAE, LoRAs and embeddings these requests name (the first names the model,
        VAE and LoRAs: requests batch together only when those agree)."""
        model, loras = self.load(requests[0].model), requests[0].loras
        apply_vae(model, requests[0].vae)
        apply_loras(model, loras)
        texts = [t for r in requests for t in (r.prompt, r.negative_prompt, *(t for d in r.directions for t in d[:2]))]
        self._encoder.expansions = apply_embeddings(model, texts)
        # LoRAs may change the text encoder: cached prompt features depend on them
        self._encoder.state = tuple((str(name), float(weight)) for name, weight in loras)
        return model

    def prepared(self, resolved: GenerationRequest) -> tuple[LoadedModel, PromptEncoder]:
        """The loaded model with a resolved request's VAE, LoRAs and embeddings active, and its prompt encoder: for
        sampling loops outside the standard tasks (animation: image interpolation, AnimateDiff)."""
        return self._prepare([resolved]), self._encoder

    def _run(self, resolved: GenerationRequest, progress: ProgressCallback | None = None,
             preview: PreviewCallback | None = None) -> GenerationResult:
        """Generate a request that `resolve` has already prepared."""
        started = time.perf_counter()
        model = self._prepare([resolved])
        hashes = lora_hashes(resolved.loras) if resolved.loras else None
        model_hash = _hashes(model, resolved)  # hashing reads the cache file: once per request, not once per image
        tracker = _Progress(progress, preview)
        controls = Controls(self.control_models(resolved)) if resolved.controls or resolved.ip_adapter else None
        with contextlib.ExitStack() as stack:
            if resolved.ip_adapter:
                adapter = resolve_adapter(resolved.ip_adapter)
                weights = self._ip_adapter_weights(adapter, resolve_encoder(adapter, resolved.ip_image_encoder))
                stack.enter_context(ip_adapter_loaded(model.pipe, weights, resolved.ip_scale, str(adapter)))
                controls.ip_images = [imgs.load_image(p, "IP-Adapter image").convert("RGB") for p in resolved.ip_images]
            results = self._batches(resolved, model, tracker, controls, model_hash, hashes)
        return self._screen(GenerationResult(results, resolved, time.perf_counter() - started))

    def _batches(self, resolved: GenerationRequest, model: LoadedModel, tracker: "_Progress", controls,
                 model_hash: str, hashes) -> list[GeneratedImage]:
        results: list[GeneratedImage] = []
        for batch in range(resolved.batch_count):
            first = batch * resolved.batch_size
            seeds = [resolved.seed + first + i for i in range(resolved.batch_size)]
            subseeds = [resolved.subseed + first + i for i in range(resolved.batch_size)]
            batch_request = dataclasses.replace(resolved, seed=seeds[0], subseed=subseeds[0], batch_count=1)
            prompts = resolved.image_prompts[first:first + resolved.batch_size] or [resolved.prompt] * len(seeds)
            if model.info.family.prediction_type == "flow":
                pictures = generate_flow_batch(model, batch_request, seeds, subseeds, tracker, prompts, self.upscaler,
                                               controls.units if controls else None)
            elif model.info.family.denoiser == "pipeline":
                pictures = generate_vq_batch(model, batch_request, seeds, subseeds, tracker, prompts)
            elif model.info.family.denoiser == "transformer":
                pictures = generate_dit_batch(model, batch_request, seeds, subseeds, tracker, prompts)
            else:
                texts = BatchPrompts(prompts, [resolved.negative_prompt] * len(seeds), resolved.cfg_scale)
                pictures = generate_batch(model, self._encoder, batch_request, seeds, subseeds, tracker, texts,
                                          controls, self.upscaler)
            for i, picture in enumerate(pictures):
                text = infotext(resolved, seeds[i], subseeds[i], model.info.name, model_hash, hashes, prompts[i])
                results.append(GeneratedImage(picture, seeds[i], subseeds[i], text, batch_request, i))
        return results

    def preview_image(self, latents: torch.Tensor, full: bool = False):
        """A quick look at the first image of a batch in progress: a linear latent->RGB map fitted to the model's
        VAE (cheap, the default), or a full VAE decode (`full`)."""
        from sfumato.pipelines.preview import cheap_preview, fit_latent_rgb
        from sfumato.pipelines.steps import decode_latents, to_pil

        model = self._loaded
        if full:
            with torch.no_grad():
                return to_pil(decode_latents(model, latents[:1]))[0]
        if model.preview_factors is None:  # fitted once per loaded model
            model.preview_factors = fit_latent_rgb(model)
        return cheap_preview(latents, model.preview_factors, model.vae_scale)

    def _screen(self, result: GenerationResult) -> GenerationResult:
        """Apply the image safety check: blur and flag, or withhold, images scoring at or above the threshold."""
        if self.safety.mode == "off" or not result.images:
            return result
        scores = nsfw_scores([item.image for item in result.images])
        kept = []
        for item, score in zip(result.images, scores):
            item.nsfw_score = score
            if score < self.safety.threshold:
                kept.append(item)
            elif self.safety.mode == "blur":
                item.image, item.nsfw = blur_image(item.image), True
                kept.append(item)
            else:
                result.blocked.append(f"image with seed {item.seed} withheld by the safety check "
                                      f"(NSFW score {score:.2f} >= {self.safety.threshold:g})")
        result.images = kept
        return result

    def generate_many(self, requests: list[GenerationRequest], progress: ProgressCallback | None = None,
                      preview: PreviewCallback | None = None) -> list[GenerationResult]:
        """Generate several requests, running compatible ones together as one batch.

        Requests batch together when they share everything but prompt, negative prompt, seed and
        cfg_scale (see `batch_key`); every image equals the one its request gives alone, up to float
        rounding. Others run one after another. Results come back in request order; a request whose images
        the safety check withheld has none, and says why in `blocked`. A denied prompt raises `PromptBlocked`.
        """
        resolved = [self.resolve(r) for r in requests]
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(resolved):
            groups.setdefault(batch_key(request, index), []).append(index)
        results: list[GenerationResult | None] = [None] * len(resolved)
        for indices in groups.values():
            if len(indices) == 1:
                results[indices[0]] = self._run(resolved[indices[0]], progress, preview)
                continue
            for index, result in zip(indices, self._generate_together([resolved[i] for i in indices], progress,
                                                                      preview)):
                results[index] = result
        return results  # type: ignore[return-value]

    def _generate_together(self, jobs: list[GenerationRequest], progress: ProgressCallback | None,
                           preview: PreviewCallback | None) -> list[GenerationResult]:
        started = time.perf_counter()
        model = self._prepare(jobs)
        rows = [(job, i) for job in jobs for i in range(job.batch_size)]
        # all new prompts in one encoder pass (cached for the batch); a job alone pads its prompt and negative to
        # the longer of the two, so jobs batch only when that chunk count agrees
        encoded = self._encoder.encode_many([t for job in jobs for t in (job.prompt, job.negative_prompt)],
                                            jobs[0].clip_skip)
        if len({max(len(encoded[2 * k][0]), len(encoded[2 * k + 1][0])) for k in range(len(jobs))}) > 1:
            return [self._run(job, progress, preview) for job in jobs]
        cfg = torch.tensor([job.cfg_scale for job, _ in rows], dtype=torch.float32)
        texts = BatchPrompts([job.prompt for job, _ in rows], [job.negative_prompt for job, _ in rows], cfg)
        seeds = [job.seed + i for job, i in rows]
        subseeds = [job.subseed + i for job, i in rows]
        template = dataclasses.replace(jobs[0], seed=seeds[0], subseed=subseeds[0], batch_size=len(rows))
        pictures = generate_batch(model, self._encoder, template, seeds, subseeds, _Progress(progress, preview), texts,
                                  upscaler_for=self.upscaler)
        model_hash, hashes = _hashes(model, jobs[0]), lora_hashes(jobs[0].loras) if jobs[0].loras else None
        seconds = time.perf_counter() - started
        out: dict[int, list[GeneratedImage]] = {id(job): [] for job in jobs}
        for (job, i), picture, seed, subseed in zip(rows, pictures, seeds, subseeds):
            text = infotext(job, seed, subseed, model.info.name, model_hash, hashes)
            out[id(job)].append(GeneratedImage(picture, seed, subseed, text, job, i))
        return [self._screen(GenerationResult(out[id(job)], job, seconds)) for job in jobs]


def _hashes(model: LoadedModel, request: GenerationRequest) -> tuple[str, str | None]:
    """The model's short hash and the VAE override's (None without one), as the infotext records them."""
    return model.hash, home.short_hash(Path(request.vae)) if request.vae else None


def batch_key(request: GenerationRequest, index: int) -> tuple:
    """Requests with equal keys can share one batch (`index` keeps unbatchable ones apart).

    Everything that shapes the batch as a whole must match; prompt, negative prompt, seed and
    cfg_scale stay per request. Edits, multi-batch requests, flow models and samplers with their own
    noise source (seeded once per batch) run alone.
    """
    alone = (request.init_image is not None or request.batch_count > 1 or bool(request.controls)
             or request.ip_adapter is not None or request.p2p_source is not None or sampler_has_own_noise(request.sampler)
             or request.sd_upscale > 1
             or bool(request.image_prompts)
             or request.model is None or describe(Path(request.model)).family.denoiser != "unet"
             or has_syntax(request.prompt) or has_syntax(request.negative_prompt))
    if alone:
        return ("alone", index)
    shared = dataclasses.asdict(request)
    for name in ("prompt", "negative_prompt", "seed", "subseed", "cfg_scale", "batch_size"):
        shared.pop(name)
    return (json.dumps(shared, sort_keys=True, default=str), request.cfg_scale > 1.0)
