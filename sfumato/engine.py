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
from typing import Callable, Iterator

import torch
from PIL import Image

from sfumato.control.ip_adapter import (IPAdapterWeights, ip_adapter_loaded, load_ip_adapter_weights,
                                        resolve_adapter, resolve_encoder)
from sfumato.control.models import ControlModel, embedded_controlnet, load_control_model
from sfumato.control.models import resolve as resolve_control
from sfumato.control.units import ControlUnit, parse_units
from sfumato.caching import Recent
from sfumato.errors import ImageBlocked, InvalidRequest
from sfumato.limits import LOCAL, Limits, OverBudget, check_pixels
from sfumato.models import home
from sfumato.models.detect import ModelInfo, describe
from sfumato.models.loader import LoadedModel, load_model
from sfumato.models.embeddings import apply_embeddings
from sfumato.models.lora import apply_loras, lora_hashes
from sfumato.models.vae import apply_vae
from sfumato.output import infotext
from sfumato.pipelines import images as imgs
from sfumato.pipelines.recipes import recipe_request
from sfumato.pipelines.runners import BatchJob, runner_for
from sfumato.pipelines.tasks import BatchPrompts, Controls, generate_batch
from sfumato.prompts.encode import PromptEncoder
from sfumato.prompts.schedule import has_syntax, prompt_schedule, split_and
from sfumato.prompts.flags import split_flags
from sfumato.prompts.lora_tags import extract_lora_tags
from sfumato.resolve import Resolver
from sfumato.requests import GeneratedImage, GenerationRequest, GenerationResult, UpscaleRequest
from sfumato.safety.classifier import SafetySettings, nsfw_scores
from sfumato.safety.classifier import blur as blur_image
from sfumato.safety.policy import PromptPolicy
from sfumato.sampling.samplers import sampler_has_own_noise
from sfumato import upscale as upscalers

ProgressCallback = Callable[[int, int], None]  # (steps done, steps known so far)
PreviewCallback = Callable[[torch.Tensor], None]  # the batch's latents after a step


class Interrupted(Exception):
    """Raised by a progress or preview callback to stop a generation between two steps, or by `stoppable`'s hooks
    inside one."""


@contextlib.contextmanager
def stoppable(model: LoadedModel, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Forward pre-hooks on the blocks of the denoiser (UNet down/mid/up blocks, transformer blocks) and of the VAE
    decoder, for the block's duration: when `should_stop()` says so, `Interrupted` is raised at the next block — well
    under a second at any image size, where a step of a large image takes minutes on a CPU."""
    if should_stop is None:
        yield
        return

    def check(_module, _inputs):
        if should_stop():
            raise Interrupted()

    pipe = model.pipe
    owners = [getattr(pipe, "unet", None), getattr(pipe, "transformer", None),
              getattr(getattr(pipe, "vae", None), "decoder", None)]
    blocks = []
    for owner in (o for o in owners if o is not None):
        for name in ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks"):
            blocks += list(getattr(owner, name, None) or [])
        if getattr(owner, "mid_block", None) is not None:
            blocks.append(owner.mid_block)
    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def default_model() -> str | None:
    """The model used when a request names none: `SFUMATO_MODEL`, else the embedded default (sfumato-scenes)."""
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
        self.device, self.dtype = device, dtype
        self.compile = compile  # torch.compile mode for every model this engine loads (speed.compiled), or None
        self.memory = memory  # low-memory modes and 8-bit weights for every model it loads (memory.MemorySettings)
        self.safety = safety or SafetySettings(mode="off")  # the library default: prompt policy on, image check off
        policy = None if self.safety.policy == "off" else PromptPolicy.load(self.safety.policy)
        self.resolver = Resolver(self.limits, policy, paths)  # paths: may prompt tags name files outside the home
        self._loaded: LoadedModel | None = None
        self._encoder: PromptEncoder | None = None
        self._load_lock = threading.Lock()
        self._control_cache: Recent[ControlModel] = Recent(4)  # loaded control models, by path/device/dtype
        self._ip_cache: tuple[tuple[str, ...], IPAdapterWeights] | None = None
        self._upscalers: Recent[upscalers.Upscaler] = Recent(3)  # loaded upscalers, by name and device
        # asked before every block of the denoiser and the VAE decoder: True stops the generation there (Interrupted)
        # — a cancel takes effect within a block, not at the next step (a server's worker sets it)
        self.should_stop: Callable[[], bool] | None = None

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

    def resolve(self, request: GenerationRequest, video: bool = False) -> GenerationRequest:
        """Apply prompt tags and flags, model defaults and random seeds; validate (`resolve.Resolver`). Loads no
        weights. `video`: the settings of a video model's clip (animation.video_model), not of images."""
        request = dataclasses.replace(request).validate()
        return self.resolver.resolve(request, self.describe(request.model), video=video)

    def upscaler(self, name: str) -> upscalers.Upscaler:
        """A loaded upscaler, kept across requests (the three most recent), on the engine's device."""
        info = upscalers.find(name)
        device = str(self._loaded.device) if self._loaded is not None else (self.device or "cpu")
        return self._upscalers.get((info.name, device), lambda: upscalers.load(info, device))

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

    def control_models(self, request: GenerationRequest) -> list[tuple[ControlUnit, ControlModel]]:
        """The request's units with their loaded models (kept loaded across requests, keyed by path)."""
        model = self._loaded
        pairs = []
        for unit in parse_units(request.controls):
            if unit.is_reference:
                pairs.append((unit, None))
                continue
            path = resolve_control(unit.model)
            key = (str(path), str(model.device), str(model.dtype))
            pairs.append((unit, self._control_cache.get(key, lambda: load_control_model(path, model.device,
                                                                                          model.dtype, unit.model))))
        return pairs

    def _ip_adapter_weights(self, adapter: Path, encoder: Path) -> IPAdapterWeights:
        """The adapter's weights and vision encoder, loaded once and kept (the last one used) across requests."""
        model = self._loaded
        key = (str(adapter), str(encoder), str(model.device), str(model.dtype))
        if self._ip_cache is None or self._ip_cache[0] != key:
            self._ip_cache = None  # free the old encoder first
            self._ip_cache = (key, load_ip_adapter_weights(adapter, encoder, model.device, model.dtype))
        return self._ip_cache[1]

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

    def _block_stop(self) -> Callable[[], bool] | None:
        """`should_stop` for the per-block hooks — none on a compiled model (hooks added and removed per request
        would make torch.compile trace it again each time): there a stop waits for the step's end."""
        return None if self.compile else self.should_stop

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
            stack.enter_context(stoppable(model, self._block_stop()))
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
            job = BatchJob(model, self._encoder, batch_request, seeds, subseeds, tracker, prompts, controls,
                           self.upscaler)
            pictures = runner_for(model.info.family).generate(job)
            for i, picture in enumerate(pictures):
                text = infotext(resolved, seeds[i], subseeds[i], model.info.name, model_hash, hashes, prompts[i],
                                _precision(model))
                results.append(GeneratedImage(picture, seeds[i], subseeds[i], text, batch_request, i,
                                              precision=_precision(model)))
        return results

    def preview_image(self, latents: torch.Tensor, full: bool = False):
        """A quick look at the first image of a batch in progress: a linear latent->RGB map fitted to the model's
        VAE (cheap, the default), or a full VAE decode (`full`, or a model whose sfumato.json says `"preview": "full"`:
        sfumato-scenes, whose 8-channel latents no linear map reads, and whose tiny decoder costs milliseconds)."""
        from sfumato.pipelines.preview import cheap_preview, fit_latent_rgb
        from sfumato.pipelines.steps import decode_latents, to_pil

        model = self._loaded
        if full or model.info.settings.get("preview") == "full":
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

    def generate_shared(self, requests: list[GenerationRequest], progress: ProgressCallback | None = None,
                        preview: PreviewCallback | None = None) -> list[GenerationResult]:
        """Requests drawn as one batch whose images share self-attention with the first request's first image at its
        `consistent` strength (story frames, prompt travel). They must batch: the same settings but prompt, negative
        prompt, seed, subseed and its strength, directions and cfg_scale; no control units."""
        resolved = [self.resolve(r) for r in requests]
        keys = {batch_key(dataclasses.replace(r, consistent=0.0), 0) for r in resolved}
        if len(keys) != 1 or next(iter(keys))[0] == "alone":
            raise InvalidRequest("consistent frames must differ only in prompt, seed and directions (no control "
                                 "units, init images, prompt syntax or samplers with their own noise)")
        if len(resolved) == 1:
            return [self._run(resolved[0], progress, preview)]
        return self._generate_together(resolved, progress, preview)

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
        texts = BatchPrompts([job.prompt for job, _ in rows], [job.negative_prompt for job, _ in rows], cfg,
                             [list(job.directions) for job, _ in rows], [job.subseed_strength for job, _ in rows])
        seeds = [job.seed + i for job, i in rows]
        subseeds = [job.subseed + i for job, i in rows]
        template = dataclasses.replace(jobs[0], seed=seeds[0], subseed=subseeds[0], batch_size=len(rows))
        with stoppable(model, self._block_stop()):
            pictures = generate_batch(model, self._encoder, template, seeds, subseeds, _Progress(progress, preview),
                                      texts, upscaler_for=self.upscaler)
        model_hash, hashes = _hashes(model, jobs[0]), lora_hashes(jobs[0].loras) if jobs[0].loras else None
        seconds = time.perf_counter() - started
        out: dict[int, list[GeneratedImage]] = {id(job): [] for job in jobs}
        for (job, i), picture, seed, subseed in zip(rows, pictures, seeds, subseeds):
            text = infotext(job, seed, subseed, model.info.name, model_hash, hashes, precision=_precision(model))
            out[id(job)].append(GeneratedImage(picture, seed, subseed, text, job, i, precision=_precision(model)))
        return [self._screen(GenerationResult(out[id(job)], job, seconds)) for job in jobs]


def _precision(model: LoadedModel) -> str:
    return str(model.dtype).removeprefix("torch.")


def _hashes(model: LoadedModel, request: GenerationRequest) -> tuple[str, str | None]:
    """The model's short hash and the VAE override's (None without one), as the infotext records them."""
    return model.hash, home.short_hash(Path(request.vae)) if request.vae else None


def batch_key(request: GenerationRequest, index: int) -> tuple:
    """Requests with equal keys can share one batch (`index` keeps unbatchable ones apart).

    Everything that shapes the batch as a whole must match; prompt, negative prompt, seed, subseed and its
    strength, conditioning directions and cfg_scale stay per request. Edits, multi-batch requests, flow models and samplers with their own
    noise source (seeded once per batch) run alone.
    """
    alone = (request.init_image is not None or request.batch_count > 1 or bool(request.controls)
             or request.ip_adapter is not None or request.p2p_source is not None or sampler_has_own_noise(request.sampler)
             or request.sd_upscale > 1 or request.consistent > 0
             or bool(request.image_prompts)
             or request.model is None or not runner_for(describe(Path(request.model)).family).shares_batches
             or has_syntax(request.prompt) or has_syntax(request.negative_prompt))
    if alone:
        return ("alone", index)
    shared = dataclasses.asdict(request)
    for name in ("prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "directions", "cfg_scale",
                 "batch_size"):
        shared.pop(name)
    return (json.dumps(shared, sort_keys=True, default=str), request.cfg_scale > 1.0)
