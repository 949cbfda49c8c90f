"""AUTOMATIC1111's `/sdapi/v1` API with its field names and response shapes, so A1111 clients work unmodified."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from sfumato.errors import InvalidRequest
from sfumato.models.home import sha256
from sfumato.output import parse_infotext
from sfumato.prompts.dynamic import load_styles
from sfumato.requests import GenerationRequest
from sfumato.sampling.samplers import get_sampler, sampler_names
from sfumato.server.controlnet_api import units_from_alwayson
from sfumato.server.extras_api import hires_upscaler
from sfumato.server.uploads import png_base64


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # restore_faces, save_images, ...
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    tiling: bool = False
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    denoising_strength: float | None = None
    eta: float | None = None
    override_settings: dict[str, Any] = {}
    send_images: bool = True
    alwayson_scripts: dict[str, Any] = {}  # the ControlNet extension's units (other scripts are ignored)


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = []
    mask: str | None = None
    mask_blur: int = 4
    inpainting_mask_invert: int = 0
    inpaint_full_res: bool = False
    inpainting_fill: int = 1


class PngInfoRequest(BaseModel):
    image: str


def _sampler(body: Txt2ImgRequest) -> str | None:
    name = body.sampler_name or body.sampler_index
    if not name:
        return None
    if body.scheduler and body.scheduler.lower() not in ("automatic", "") and \
            not name.lower().endswith(body.scheduler.lower()):
        name = f"{name} {body.scheduler}"
    return get_sampler(name).name


def _request(body: Txt2ImgRequest, model: str | None, vae: str | None, clip_skip: int = 1) -> GenerationRequest:
    upscaler = hires_upscaler(body.hr_upscaler) if body.enable_hr else "latent"
    return GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, model=model, vae=vae, sampler=_sampler(body),
        eta=body.eta,
        steps=body.steps, cfg_scale=body.cfg_scale, seed=body.seed, subseed=body.subseed,
        subseed_strength=body.subseed_strength, width=body.width, height=body.height, batch_size=body.batch_size,
        batch_count=body.n_iter, tile=body.tiling,
        hires_scale=body.hr_scale if body.enable_hr else 1.0,
        hires_strength=body.denoising_strength if body.enable_hr and body.denoising_strength is not None else 0.55,
        hires_steps=body.hr_second_pass_steps or None, hires_upscaler=upscaler,
        clip_skip=int(body.override_settings.get("CLIP_stop_at_last_layers", clip_skip)), styles=list(body.styles),
        token_merging_ratio=_number(body.override_settings, "token_merging_ratio"),
        **_step_cache(body.override_settings),
    )


def _number(settings: dict[str, Any], name: str) -> float:
    try:
        return float(settings.get(name) or 0.0)
    except (TypeError, ValueError):
        raise InvalidRequest(f"override_settings.{name} must be a number") from None


def _step_cache(settings: dict[str, Any]) -> dict[str, int]:
    """Step caching through the option names of A1111's DeepCache extension (sd-webui-deepcache-standalone)."""
    if not settings.get("deepcache_enable"):
        return {}
    try:
        return {"cache_interval": int(settings.get("deepcache_full_run_step_rate", 3)),
                "cache_branch": int(settings.get("deepcache_cache_resnet_level", 0))}
    except (TypeError, ValueError):
        raise InvalidRequest("deepcache_full_run_step_rate and deepcache_cache_resnet_level must be integers") from None


# A1111 options sfumato does not let a client change: sent with these values they are accepted, otherwise refused
FIXED_OPTIONS = {"samples_format": "png", "grid_format": "png", "eta_noise_seed_delta": 0, "outdir_samples": "",
                 "outdir_txt2img_samples": "", "outdir_img2img_samples": "", "outdir_extras_samples": "",
                 "outdir_grids": "", "samples_save": True, "enable_pnginfo": True, "randn_source": "CPU",
                 "face_restoration": False, "img2img_fix_steps": False}


def add_routes(app: FastAPI, service, guarded: list) -> None:
    @app.get("/sdapi/v1/prompt-styles", tags=["a1111"], dependencies=guarded)
    def prompt_styles():
        """The styles of $SFUMATO_HOME/styles.csv, as A1111 lists them."""
        return [{"name": name, "prompt": prompt, "negative_prompt": negative}
                for name, (prompt, negative) in load_styles().items()]

    def model_for(body: Txt2ImgRequest) -> str | None:
        return body.override_settings.get("sd_model_checkpoint") or service.current_model

    def vae_for(body: Txt2ImgRequest) -> str | None:
        vae = body.override_settings.get("sd_vae", service.current_vae)
        if vae is not None and not isinstance(vae, str):
            raise InvalidRequest("override_settings.sd_vae must be a VAE name (GET /sdapi/v1/sd-vae)")
        return vae

    async def run(body: Txt2ImgRequest, request: GenerationRequest, http: Request | None = None) -> dict:
        job = await run_in_threadpool(service.submit, request)
        done = await service.wait(job, http=http)
        result, resolved = done.result, done.result["request"]
        model_name = next((n for n, p in service.models.items() if p == resolved["model"]), resolved["model"])
        info = {
            "prompt": resolved["prompt"],
            "all_prompts": resolved.get("image_prompts") or [resolved["prompt"]] * len(result["seeds"]),
            "styles": resolved.get("styles", []),
            "negative_prompt": resolved["negative_prompt"],
            "all_negative_prompts": [resolved["negative_prompt"]] * len(result["seeds"]),
            "seed": result["seeds"][0], "all_seeds": result["seeds"], "subseed": result["subseeds"][0],
            "all_subseeds": result["subseeds"], "subseed_strength": resolved["subseed_strength"],
            "width": resolved["width"], "height": resolved["height"], "sampler_name": resolved["sampler"],
            "cfg_scale": resolved["cfg_scale"], "steps": resolved["steps"], "batch_size": resolved["batch_size"],
            "restore_faces": False, "sd_model_name": model_name, "seed_resize_from_w": -1,
            "seed_resize_from_h": -1, "denoising_strength": resolved["strength"] if resolved["init_image"] else None,
            "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": result["infotexts"],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(done.created)),
            "clip_skip": resolved["clip_skip"], "is_using_inpainting_conditioning": False,
            "nsfw": result["nsfw"], "job_id": done.id,
        }
        images = [png_base64(service.image_file(i)) for i in result["images"]] if body.send_images else []
        parameters = body.model_dump(exclude={"init_images", "mask", "alwayson_scripts"})
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}

    def with_controls(body: Txt2ImgRequest, request: GenerationRequest) -> GenerationRequest:
        units, fields = units_from_alwayson(body.alwayson_scripts, service)
        return dataclasses.replace(request, controls=units, **fields)

    @app.post("/sdapi/v1/txt2img", tags=["a1111"], dependencies=guarded)
    async def txt2img(body: Txt2ImgRequest, http: Request):
        request = _request(body, model_for(body), vae_for(body), service.current_clip_skip)
        return await run(body, with_controls(body, request), http)

    @app.post("/sdapi/v1/img2img", tags=["a1111"], dependencies=guarded)
    async def img2img(body: Img2ImgRequest, http: Request):
        if not body.init_images:
            raise InvalidRequest("init_images must hold one base64 image")
        request = _request(body, model_for(body), vae_for(body), service.current_clip_skip)
        fields: dict[str, Any] = {"init_image": service.upload(body.init_images[0], "init_images[0]"),
                                  "strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
                                  "mask_blur": body.mask_blur,
                                  "inpaint_fill": "fill" if body.inpainting_fill == 0 else "original"}
        if body.mask:
            mask = service.open_upload(body.mask, "mask").convert("L")
            if body.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
            fields["mask"] = service.keep(mask)
        return await run(body, with_controls(body, dataclasses.replace(request, **fields)), http)

    @app.get("/sdapi/v1/scripts", tags=["a1111"], dependencies=guarded)
    def scripts():
        """The scripts A1111 clients look for. `alwayson_scripts.controlnet` is served; "controlnet m2m" (the
        extension's selectable script) is listed because clients such as `webuiapi` decide from it that ControlNet
        exists — and only then reset their units on a call without ControlNet (`{"args": []}`)."""
        names = ["controlnet", "controlnet m2m"]
        return {"txt2img": names, "img2img": names}

    @app.get("/sdapi/v1/progress", tags=["a1111"], dependencies=guarded)
    def progress(skip_current_image: bool = False):
        p = service.worker.progress
        if not skip_current_image:
            service.worker.watch()
        running = bool(p.job_ids)
        fraction = p.step / p.total if running and p.total else 0.0
        elapsed = time.time() - p.started if running else 0.0
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        image = None
        if running and p.preview_png and not skip_current_image:
            image = base64.b64encode(p.preview_png).decode()
        queued = service.store.counts().get("queued", 0)
        return {"progress": fraction, "eta_relative": eta, "current_image": image, "textinfo": None,
                "current_task": p.job_ids[0] if running else None,
                "state": {"skipped": False, "interrupted": False, "job": p.job_ids[0] if running else "",
                          "job_count": len(p.job_ids) + queued, "job_timestamp": time.strftime(
                              "%Y%m%d%H%M%S", time.localtime(p.started or time.time())), "job_no": 0,
                          "sampling_step": p.step if running else 0, "sampling_steps": p.total if running else 0}}

    @app.post("/sdapi/v1/interrupt", tags=["a1111"], dependencies=guarded)
    def interrupt():
        service.worker.interrupt()
        return {}

    @app.post("/sdapi/v1/skip", tags=["a1111"], dependencies=guarded)
    def skip():
        service.worker.interrupt()  # one batch runs at a time: skipping it is interrupting it
        return {}

    def options() -> dict[str, Any]:
        return {"sd_model_checkpoint": _title(service, service.current_model),
                "sd_checkpoint_hash": _hash(service, service.current_model), "sd_vae": service.current_vae,
                "CLIP_stop_at_last_layers": service.current_clip_skip, **FIXED_OPTIONS}

    @app.get("/sdapi/v1/options", tags=["a1111"], dependencies=guarded)
    def get_options():
        """Every option this server knows: the ones it honours (model, VAE, CLIP skip) and the ones fixed here."""
        return options()

    @app.post("/sdapi/v1/options", tags=["a1111"], dependencies=guarded)
    def set_options(body: dict[str, Any]):
        """Honoured: `sd_model_checkpoint`, `sd_vae`, `CLIP_stop_at_last_layers`. Any other known option may be sent
        with its current value (clients post back what GET returned); a change or an unknown option is a 422, never
        accepted and ignored. Everything is checked before anything changes."""
        current = options()
        for key, value in body.items():
            if key in ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"):
                continue
            if key not in current:
                raise InvalidRequest(f"option {key!r} is not supported by sfumato (GET /sdapi/v1/options lists the "
                                     "known ones)")
            if value != current[key] and key != "sd_checkpoint_hash":
                raise InvalidRequest(f"option {key!r} can only be {current[key]!r} on sfumato, got {value!r}")
        clip_skip = body.get("CLIP_stop_at_last_layers", service.current_clip_skip)
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= 12:
            raise InvalidRequest("CLIP_stop_at_last_layers must be an integer from 1 to 12")
        name = None
        if "sd_model_checkpoint" in body:
            name = str(body["sd_model_checkpoint"]).split(" [")[0]
            service.model_path(name)  # 404 for unknown names
        if "sd_vae" in body:
            if not isinstance(body["sd_vae"], str):
                raise InvalidRequest("sd_vae must be a VAE name, \"Automatic\" or \"None\"")
            service.vae_path(body["sd_vae"])  # 404 for unknown names
        if name is not None:
            service.current_model = name
        if "sd_vae" in body:
            service.current_vae = body["sd_vae"]
        service.current_clip_skip = clip_skip
        return None

    @app.get("/sdapi/v1/sd-vae", tags=["a1111"], dependencies=guarded)
    def sd_vae():
        """The VAEs of $SFUMATO_HOME/models/vae (A1111 lists file names; paths stay on the server)."""
        return [{"model_name": name, "filename": name} for name in service.vaes]

    @app.get("/sdapi/v1/sd-models", tags=["a1111"], dependencies=guarded)
    def sd_models():
        return [{"title": _title(service, name), "model_name": name, "hash": _hash(service, name)[:10],
                 "sha256": _hash(service, name), "filename": name, "config": None,
                 **_family_fields(service.models[name])} for name in service.models]

    @app.get("/sdapi/v1/samplers", tags=["a1111"], dependencies=guarded)
    def samplers():
        return [{"name": name, "aliases": [], "options": {}} for name in sampler_names()]

    @app.post("/sdapi/v1/refresh-checkpoints", tags=["a1111"], dependencies=guarded)
    def refresh_checkpoints():
        service.refresh_models()
        return None

    @app.post("/sdapi/v1/refresh-vae", tags=["a1111"], dependencies=guarded)
    def refresh_vae():
        service.refresh_models()
        return None

    @app.get("/sdapi/v1/loras", tags=["a1111"], dependencies=guarded)
    def loras():
        """The LoRA/LyCORIS files of $SFUMATO_HOME/models/loras with their type (LoRA, LoCon, LoHa, LoKr, DoRA,
        full) and training metadata, as A1111's Lora extension lists them (file names only, no server paths)."""
        from safetensors import safe_open

        found = []
        for name, path in service.loras.items():
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
            found.append({"name": name, "alias": metadata.get("ss_output_name", name), "path": Path(path).name,
                          "type": service.lora_types.get(name, "LoRA"), "metadata": metadata})
        return found

    @app.post("/sdapi/v1/refresh-loras", tags=["a1111"], dependencies=guarded)
    def refresh_loras():
        service.refresh_models()
        return None

    @app.post("/sdapi/v1/png-info", tags=["a1111"], dependencies=guarded)
    def png_info(body: PngInfoRequest):
        image = service.open_upload(body.image, "image")
        items = {k: v for k, v in (getattr(image, "text", {}) or {}).items() if isinstance(v, str)}
        longest = service.settings.limits.max_png_text_chars
        for key, value in items.items():
            if len(value) > longest:
                raise InvalidRequest(f"the image's {key!r} text is longer than {longest} characters")
        info = items.pop("parameters", "")
        return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}


def _hash(service, name: str) -> str:
    try:
        return sha256(Path(service.models[name]))
    except (KeyError, OSError):
        return ""


def _title(service, name: str) -> str:
    digest = _hash(service, name)
    return f"{name} [{digest[:10]}]" if digest else name


def _family_fields(path: str) -> dict:
    """Our extra fields of an sd-models entry: the side the model was trained at (the UI offers sizes around it),
    its family (`sfumato families`; the UI lists it beside the name), the samplers it takes (the UI offers
    those) and its few-step setting where it has one (sfumato.json's `fast`: the UI's Fast box)."""
    from sfumato.errors import SfumatoError
    from sfumato.models.detect import describe

    from sfumato.pipelines.support import family_samplers

    try:
        family = describe(Path(path)).family
    except (SfumatoError, OSError, ValueError):
        return {"native_size": None, "family": None, "samplers": None, "fast": None}
    from sfumato.models.embedded import settings as model_settings

    fast = model_settings(Path(path)).get("fast") if Path(path).is_dir() else None
    return {"native_size": family.native_size, "family": family.name, "samplers": family_samplers(family),
            "fast": fast}
