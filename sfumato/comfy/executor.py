"""Run a ComfyUI API-format graph on the engine — one engine under every dialect, not a second one.

Nodes run in topological order. Loaders and conditioning nodes produce descriptions (a checkpoint path and its
LoRAs, a prompt text, control units); a KSampler turns its inputs into one `GenerationRequest` and a VAEDecode runs it
through `Engine.generate` — so a ComfyUI txt2img, img2img or inpaint is exactly the engine's. A latent that comes
from pixels (VAEEncode) makes an img2img request at the sampler's denoise; a latent that comes from another sampler
is decoded first and goes back in as pixels (the round trip ComfyUI avoids: the one semantic difference of chained
samplers, documented in docs/comfyui.md).

Like ComfyUI, an executor keeps node outputs between prompts: a node whose class and inputs (recursively) are
unchanged is not run again (`cached` lists them), so re-queueing a workflow with a new seed re-runs only the sampler
and what follows it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from sfumato.comfy.graph import is_link, order, validate
from sfumato.comfy.names import Names
from sfumato.comfy.nodes import NODES, SAMPLERS
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.requests import MAX_SEED, GenerationRequest

CACHE_ENTRIES = 64
MAX_GENERATIONS = 16  # sampler runs per prompt: a graph's cost stays bounded like any other request's


@dataclass(frozen=True)
class Model:
    path: str
    loras: tuple[tuple[str, float], ...] = ()
    transformer_only: bool = False  # UNETLoader: joined with the text encoders and VAE before it runs


@dataclass(frozen=True)
class Clip:
    path: str
    loras: tuple[tuple[str, float], ...] = ()
    clip_skip: int = 1
    files: tuple[str, ...] = ()  # CLIPLoader / DualCLIPLoader: separate text-encoder files


@dataclass(frozen=True)
class Vae:
    path: str | None  # None: the checkpoint's own


@dataclass(frozen=True)
class Cond:
    texts: tuple[str, ...]
    controls: tuple[str, ...] = ()  # control units as JSON (hashable)
    guidance: float | None = None  # FluxGuidance
    clip_skip: int = 1  # CLIPSetLastLayer
    clip_files: tuple[str, ...] = ()  # separate text-encoder files (CLIPLoader)

    @property
    def text(self) -> str:
        return " AND ".join(t for t in self.texts if t.strip()) if len(self.texts) > 1 else self.texts[0]


@dataclass
class Latent:
    width: int
    height: int
    batch: int = 1
    images: list[Image.Image] | None = None  # from pixels (VAEEncode), or a sampler's decoded output
    mask: Image.Image | None = None  # white = repaint
    fill: bool = False  # VAEEncodeForInpaint: the masked area starts from its surroundings
    request: GenerationRequest | None = None  # a sampler's output, not yet decoded
    vae: Vae | None = None
    parts: tuple[str, ...] = ()  # a transformer-only model: its text-encoder files (joined at decode)


@dataclass
class Images:
    images: list[Image.Image]
    infotexts: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # sfumato records (request, batch index) when generated


@dataclass
class Output:
    node_id: str
    kind: str  # "output" (SaveImage) or "temp" (PreviewImage)
    prefix: str
    images: Images


def sampler_for(name: str, scheduler: str) -> tuple[str, str | None]:
    """(sfumato sampler, timestep spacing) for ComfyUI's sampler and scheduler names."""
    base = SAMPLERS[name]
    if scheduler == "karras":
        karras = f"{base} Karras"
        from sfumato.sampling.samplers import sampler_names

        if karras not in sampler_names():
            raise UnsupportedModel(f"sampler {name} with the karras scheduler has no sfumato equivalent")
        return karras, None
    if scheduler in ("simple", "sgm_uniform"):
        return base, "trailing"
    if scheduler == "ddim_uniform":
        return base, "leading"
    if scheduler in ("exponential", "beta"):
        raise UnsupportedModel(f"the {scheduler} scheduler is not available in sfumato; use normal, karras, simple "
                               "or sgm_uniform")
    return base, None


class Executor:
    """Runs graphs on one engine, keeping node outputs between runs (ComfyUI's cache)."""

    def __init__(self, engine, names: Names, work_dir: Path | None = None):
        self.engine, self.names = engine, names
        self._temp = None if work_dir else tempfile.TemporaryDirectory(prefix="sfumato-comfy-")
        self.work_dir = Path(work_dir or self._temp.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.cache: dict[str, tuple] = {}
        self.check: Callable[[GenerationRequest], None] | None = None  # a server's limits on each request
        self.progress: Callable[[int, int], None] | None = None
        self.preview: Callable | None = None
        self.generations = 0

    def run(self, prompt: dict[str, Any], on_node: Callable[[str, str], None] | None = None,
            progress: Callable[[int, int], None] | None = None,
            preview: Callable | None = None) -> tuple[list[Output], list[str]]:
        """(outputs of the output nodes, the node ids served from the cache). `on_node(node_id, class_type)` is
        called as each node starts; `progress(done, total)` at each sampling step; `preview` gets the latents (the
        engine's preview callback)."""
        outputs_wanted = validate(prompt, None if self.names.allow_paths else self.names.lists())
        signatures: dict[str, str] = {}
        values: dict[str, tuple] = {}
        cached: list[str] = []
        results: list[Output] = []
        self.progress, self.preview = progress, preview
        self.generations = 0
        for output in outputs_wanted:
            for node_id in order(prompt, output):
                if node_id in values:
                    continue
                node = prompt[node_id]
                signatures[node_id] = self._signature(node, signatures)
                hit = self.cache.get(signatures[node_id])
                if hit is not None and not NODES[node["class_type"]].output:
                    values[node_id] = hit
                    cached.append(node_id)
                    continue
                if on_node:
                    on_node(node_id, node["class_type"])
                inputs = {name: values[str(v[0])][v[1]] if is_link(v) else v
                          for name, v in node.get("inputs", {}).items()}
                result = getattr(self, "_" + node["class_type"])(**inputs)
                if NODES[node["class_type"]].output:
                    results.append(Output(node_id, *result))
                    result = ()
                values[node_id] = result
                self.cache[signatures[node_id]] = result
                while len(self.cache) > CACHE_ENTRIES:
                    self.cache.pop(next(iter(self.cache)))
        return results, cached

    @staticmethod
    def _signature(node: dict, signatures: dict[str, str]) -> str:
        inputs = {name: ["link", signatures[str(v[0])], v[1]] if is_link(v) else v
                  for name, v in sorted(node.get("inputs", {}).items())}
        text = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _keep(self, image: Image.Image, stem: str) -> str:
        """Write an intermediate image where requests can name it (they carry paths)."""
        digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:16]
        path = self.work_dir / f"{stem}-{digest}.png"
        if not path.exists():
            image.save(path)
        return str(path)

    # --- loaders ------------------------------------------------------------------------------------------
    def _CheckpointLoaderSimple(self, ckpt_name):
        path = self.names.find("checkpoints", ckpt_name)
        return Model(path), Clip(path), Vae(None)

    def _VAELoader(self, vae_name):
        return (Vae(self.names.find("vae", vae_name)),)

    def _LoraLoader(self, model, clip, lora_name, strength_model=1.0, strength_clip=1.0):
        path = self.names.find("loras", lora_name)
        return (replace(model, loras=(*model.loras, (path, float(strength_model)))),
                replace(clip, loras=(*clip.loras, (path, float(strength_clip)))))

    def _LoraLoaderModelOnly(self, model, lora_name, strength_model=1.0):
        return (replace(model, loras=(*model.loras, (self.names.find("loras", lora_name), float(strength_model)))),)

    def _UNETLoader(self, unet_name, weight_dtype="default"):
        return (Model(self.names.find("diffusion_models", unet_name), transformer_only=True),)

    def _CLIPLoader(self, clip_name, type="stable_diffusion", device="default"):  # noqa: A002 (ComfyUI's name)
        path = self.names.find("text_encoders", clip_name)
        return (Clip("", files=(path,)),)

    def _DualCLIPLoader(self, clip_name1, clip_name2, type="flux", device="default"):  # noqa: A002
        return (Clip("", files=(self.names.find("text_encoders", clip_name1),
                                self.names.find("text_encoders", clip_name2))),)

    def _joined(self, model: str, parts: tuple[str, ...], vae: Vae) -> str:
        """ComfyUI's split files (transformer, text encoders, VAE) joined into one SD3/FLUX file, once."""
        from sfumato.models.flowfile import assemble

        if vae.path is None:
            raise InvalidRequest("a model from UNETLoader needs its VAE from a VAELoader")
        files = [model, *parts, vae.path]
        key = hashlib.sha256(json.dumps([[f, Path(f).stat().st_mtime_ns] for f in files]).encode()).hexdigest()[:16]
        out = self.work_dir / f"joined-{key}.safetensors"
        if not out.exists():
            assemble(model, [*parts, vae.path], out)
        return str(out)

    def _ControlNetLoader(self, control_net_name):
        return (self.names.find("controlnet", control_net_name),)

    def _UpscaleModelLoader(self, model_name):
        return (self.names.find("upscale_models", model_name),)

    # --- conditioning -------------------------------------------------------------------------------------
    def _CLIPTextEncode(self, text, clip):
        return (Cond((str(text),), clip_skip=clip.clip_skip, clip_files=clip.files),)

    def _CLIPSetLastLayer(self, clip, stop_at_clip_layer=-1):
        return (replace(clip, clip_skip=-int(stop_at_clip_layer)),)

    def _ConditioningCombine(self, conditioning_1, conditioning_2):
        return (Cond(conditioning_1.texts + conditioning_2.texts, conditioning_1.controls + conditioning_2.controls,
                     conditioning_1.guidance or conditioning_2.guidance, conditioning_1.clip_skip),)

    def _FluxGuidance(self, conditioning, guidance=3.5):
        return (replace(conditioning, guidance=float(guidance)),)

    def _control(self, conditioning: Cond, control_net: str, image: Images, strength: float, start: float = 0.0,
                 end: float = 1.0) -> Cond:
        unit = {"image": self._keep(image.images[0], "control"), "module": "none", "model": control_net,
                "weight": float(strength), "guidance_start": float(start), "guidance_end": float(end)}
        return replace(conditioning, controls=(*conditioning.controls, json.dumps(unit, sort_keys=True)))

    def _ControlNetApply(self, conditioning, control_net, image, strength=1.0):
        return (self._control(conditioning, control_net, image, strength),)

    def _ControlNetApplyAdvanced(self, positive, negative, control_net, image, strength=1.0, start_percent=0.0,
                                 end_percent=1.0, vae=None):
        # sfumato applies a unit to both CFG rows (A1111's "balanced"); the unit rides on the positive side
        return self._control(positive, control_net, image, strength, start_percent, end_percent), negative

    # --- latents and sampling -----------------------------------------------------------------------------
    def _EmptyLatentImage(self, width=512, height=512, batch_size=1):
        return (Latent(int(width) // 8 * 8, int(height) // 8 * 8, int(batch_size)),)

    _EmptySD3LatentImage = _EmptyLatentImage

    def _VAEEncode(self, pixels, vae):
        first = pixels.images[0]
        return (Latent(first.width // 8 * 8, first.height // 8 * 8, len(pixels.images), images=pixels.images,
                       vae=vae),)

    def _VAEEncodeForInpaint(self, pixels, vae, mask, grow_mask_by=6):
        from PIL import ImageFilter

        (latent,) = self._VAEEncode(pixels, vae)
        if grow_mask_by:
            mask = mask.filter(ImageFilter.MaxFilter(2 * (int(grow_mask_by) // 2) + 1))
        return (replace(latent, mask=mask, fill=True),)

    def _InpaintModelConditioning(self, positive, negative, vae, pixels, mask, noise_mask=True):
        (latent,) = self._VAEEncode(pixels, vae)
        return positive, negative, replace(latent, mask=mask)

    def _SetLatentNoiseMask(self, samples, mask):
        return (replace(samples, mask=mask),)

    def _LatentUpscale(self, samples, upscale_method, width, height, crop="disabled"):
        images = self._decoded(samples)
        width = int(width) or round(samples.width * int(height) / samples.height)
        height = int(height) or round(samples.height * width / samples.width)
        scaled = self._ImageScale(Images(images), upscale_method, width, height, crop)[0]
        return (Latent(width // 8 * 8, height // 8 * 8, len(images), images=scaled.images, vae=samples.vae),)

    def _LatentUpscaleBy(self, samples, upscale_method, scale_by=1.5):
        return self._LatentUpscale(samples, upscale_method, round(samples.width * scale_by),
                                   round(samples.height * scale_by))

    def _KSampler(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                  denoise=1.0):
        return (self._sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                             float(denoise)),)

    def _KSamplerAdvanced(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive,
                          negative, latent_image, start_at_step=0, end_at_step=10000,
                          return_with_leftover_noise="disable"):
        # split sampling (base to end_at_step with leftover noise, then a refiner from start_at_step without added
        # noise) runs as a full base pass, then img2img of its image at the remaining fraction: docs/comfyui.md
        denoise = 1.0 - min(int(start_at_step), int(steps)) / int(steps)
        return (self._sample(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                             latent_image, denoise),)

    def _sample(self, model: Model, seed, steps, cfg, sampler_name, scheduler, positive: Cond, negative: Cond,
                latent: Latent, denoise: float) -> Latent:
        sampler, spacing = sampler_for(sampler_name, scheduler)
        fields: dict[str, Any] = dict(
            # at cfg 1 ComfyUI never evaluates the negative (and FLUX-style models take none)
            prompt=positive.text, negative_prompt=negative.text if float(cfg) != 1.0 else "", model=model.path,
            loras=list(model.loras),
            seed=int(seed) % (MAX_SEED + 1), steps=int(steps), cfg_scale=float(cfg), sampler=sampler,
            clip_skip=positive.clip_skip,
            timestep_spacing=spacing, width=latent.width, height=latent.height, batch_size=latent.batch,
            controls=[json.loads(unit) for unit in positive.controls])
        if positive.guidance is not None:  # FLUX's distilled guidance is its cfg_scale here
            fields["cfg_scale"] = positive.guidance
        images = latent.images if latent.request is None else self._decoded(latent)
        if images is not None:
            fields.update(init_image=self._keep(images[0], "init"), strength=denoise, batch_size=len(images))
            if latent.mask is not None:
                fields["mask"] = self._keep(latent.mask.convert("L"), "mask")
                fields["mask_blur"] = 0
                fields["inpaint_fill"] = "fill" if latent.fill else "original"
        elif denoise < 1.0:
            raise InvalidRequest("a sampler with denoise below 1 needs a latent from an image (VAEEncode)")
        return Latent(latent.width, latent.height, fields["batch_size"], request=GenerationRequest(**fields),
                      vae=latent.vae, parts=positive.clip_files if model.transformer_only else ())

    def _transformer_only(self, path: str) -> bool:
        return path in self.names.diffusion_models.values()

    def _decoded(self, latent: Latent) -> list[Image.Image]:
        if latent.request is None:
            if latent.images is None:
                return [Image.new("RGB", (latent.width, latent.height), (0, 0, 0))] * latent.batch
            return latent.images
        return self._VAEDecode(latent, latent.vae or Vae(None))[0].images

    def _VAEDecode(self, samples, vae):
        if samples.request is None:
            return (Images(self._decoded(samples)),)
        if samples.parts or self._transformer_only(samples.request.model):
            request = replace(samples.request, model=self._joined(samples.request.model, samples.parts, vae))
        else:
            request = samples.request if vae.path is None else replace(samples.request, vae=vae.path)
        if self.check is not None:
            self.check(request)
        self.generations += 1
        if self.generations > MAX_GENERATIONS:
            raise InvalidRequest(f"a workflow may run at most {MAX_GENERATIONS} samplers per prompt")
        result = self.engine.generate(request, progress=self.progress, preview=self.preview)
        return (Images([i.image for i in result.images], [i.infotext for i in result.images],
                       [{"request": i.request.to_dict(), "batch_index": i.batch_index, "precision": i.precision}
                        for i in result.images]),)

    # --- images -------------------------------------------------------------------------------------------
    def _LoadImage(self, image):
        path = self.names.input_image(image)
        from sfumato.pipelines.images import load_image

        picture = load_image(str(path), "input image")
        if "A" in picture.getbands():
            alpha = np.asarray(picture.getchannel("A"), dtype=np.uint8)
            mask = Image.fromarray(255 - alpha)  # ComfyUI: mask = 1 - alpha (transparent = to repaint)
        else:
            mask = Image.new("L", picture.size, 0)
        return Images([picture.convert("RGB")]), mask

    def _LoadImageMask(self, image, channel="alpha"):
        from sfumato.pipelines.images import load_image

        picture = load_image(str(self.names.input_image(image)), "input mask")
        band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
        if band not in picture.getbands():
            picture = picture.convert("RGBA")
        values = picture.getchannel(band)
        return (Image.eval(values, lambda v: 255 - v) if band == "A" else values,)

    def _ImageScale(self, image, upscale_method, width, height, crop="disabled"):
        methods = {"nearest-exact": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                   "area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC,
                   "lanczos": Image.Resampling.LANCZOS, "bislerp": Image.Resampling.BICUBIC}
        out = []
        for picture in image.images:
            w = int(width) or round(picture.width * int(height) / picture.height)
            h = int(height) or round(picture.height * w / picture.width)
            if crop == "center":
                scale = max(w / picture.width, h / picture.height)
                cw, ch = round(w / scale), round(h / scale)
                left, top = (picture.width - cw) // 2, (picture.height - ch) // 2
                picture = picture.crop((left, top, left + cw, top + ch))
            out.append(picture.resize((w, h), methods[upscale_method]))
        return (Images(out),)

    def _ImageScaleBy(self, image, upscale_method, scale_by=1.0):
        first = image.images[0]
        return self._ImageScale(image, upscale_method, round(first.width * scale_by), round(first.height * scale_by))

    def _ImageUpscaleWithModel(self, upscale_model, image):
        from sfumato.upscale.upscalers import upscale

        upscaler = self.engine.upscaler(upscale_model)
        scale = getattr(upscaler, "scale", 4)
        return (Images([upscale(p, upscaler, p.width * scale, p.height * scale) for p in image.images]),)

    # --- outputs ------------------------------------------------------------------------------------------
    def _SaveImage(self, images, filename_prefix="ComfyUI"):
        return "output", str(filename_prefix), images

    def _PreviewImage(self, images):
        return "temp", "ComfyUI_temp", images
