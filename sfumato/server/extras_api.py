"""Upscaling and image recipes over HTTP: A1111's Extras API (`/sdapi/v1/extra-single-image`,
`/extra-batch-images`, `/upscalers`, `/latent-upscale-modes`) with its field names and shapes, and the native
`/api/v1/upscalers`, `/api/v1/upscale` and `/api/v1/recipes/{name}`."""

from __future__ import annotations

import base64
import dataclasses
import io
import time
import typing
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, create_model

from sfumato import upscale as upscalers
from sfumato.errors import InvalidRequest
from sfumato.output import postprocess_parameters
from sfumato.pipelines.recipes import RECIPES
from sfumato.requests import UpscaleRequest

LATENT_MODES = {"latent": "latent", "latent (antialiased)": "latent", "latent (bicubic)": "latent",
                "latent (bicubic antialiased)": "latent", "latent (nearest)": "latent-nearest",
                "latent (nearest-exact)": "latent-nearest"}


class ExtrasSingle(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str
    resize_mode: int = 0  # 0: scale by upscaling_resize; 1: scale to upscaling_resize_w x _h
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class BatchImage(BaseModel):
    data: str
    name: str = ""


class ExtrasBatch(ExtrasSingle):
    image: str = ""
    imageList: list[BatchImage] = []  # noqa: N815 (A1111's name)


def _upscale_body() -> type[BaseModel]:
    """POST /api/v1/upscale: a base64 `image` plus `UpscaleRequest`'s fields (one definition), unknown ones refused."""
    hints = typing.get_type_hints(UpscaleRequest)
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(UpscaleRequest)}
    return create_model("UpscaleBody", __config__=ConfigDict(extra="forbid"), image=(str, ...), **fields)


UpscaleBody = _upscale_body()


class RecipeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    prompt: str | None = None
    negative_prompt: str | None = None
    strength: float | None = None
    model: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    seed: int = -1
    width: int | None = None
    height: int | None = None
    loras: list[tuple[str, float]] = []
    mask: str | None = None  # restore: white where to repaint (scratches)
    upscaler: str | None = None  # restore: the restoring upscaler
    structure_model: str | None = None  # style: a canny ControlNet name from /controlnet/model_list
    structure: bool = True  # style: keep edges with a ControlNet when one is available


def hires_upscaler(name: str | None) -> str:
    """An A1111 `hr_upscaler` as a request's `hires_upscaler`: latent modes, else a listed upscaler."""
    if not name:
        return "latent"
    return LATENT_MODES.get(name.lower()) or upscalers.find(name, paths=False).name


def _extras_request(body: ExtrasSingle) -> UpscaleRequest:
    if body.gfpgan_visibility > 0 or body.codeformer_visibility > 0:
        raise InvalidRequest("face restoration (GFPGAN / CodeFormer) is not available in sfumato; set "
                             "gfpgan_visibility and codeformer_visibility to 0")
    if body.resize_mode not in (0, 1):
        raise InvalidRequest(f"resize_mode must be 0 (scale by) or 1 (scale to), got {body.resize_mode}")
    second = None if body.upscaler_2 in ("", "None") else body.upscaler_2
    if body.resize_mode == 1:
        return UpscaleRequest(body.upscaler_1 or "None", 1.0, body.upscaling_resize_w, body.upscaling_resize_h,
                              body.upscaling_crop, second, body.extras_upscaler_2_visibility).validate()
    return UpscaleRequest(body.upscaler_1 or "None", body.upscaling_resize, None, None, True, second,
                          body.extras_upscaler_2_visibility).validate()


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _fields(image, out, request: UpscaleRequest) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = [("Postprocess upscale to", f"{out.width}x{out.height}") if request.width
                                     else ("Postprocess upscale by", f"{request.scale:g}"),
                                     ("Postprocess upscaler", upscalers.find(request.upscaler, paths=False).name)]
    if request.upscaler_2 and request.upscaler_2_visibility > 0:
        fields += [("Postprocess upscaler 2", upscalers.find(request.upscaler_2, paths=False).name),
                   ("Postprocess upscaler 2 visibility", f"{request.upscaler_2_visibility:g}")]
    return fields


def add_routes(app: FastAPI, service, guarded: list) -> None:
    def listing() -> list[dict]:
        return [{"name": info.name, "model_name": info.name if info.kind != "resample" else None,
                 "model_path": info.path if info.kind != "resample" else None, "model_url": None,
                 "scale": float(info.scale)} for info in upscalers.list_upscalers()]

    @app.get("/sdapi/v1/upscalers", tags=["a1111"], dependencies=guarded)
    def a1111_upscalers():
        """Every upscaler, as A1111 lists them (model paths are shown only as names)."""
        return [{**entry, "model_path": None} for entry in listing()]

    @app.get("/sdapi/v1/latent-upscale-modes", tags=["a1111"], dependencies=guarded)
    def latent_upscale_modes():
        return [{"name": "Latent"}, {"name": "Latent (nearest)"}]

    async def upscale_one(data: str, request: UpscaleRequest, what: str):
        image = service.open_upload(data, what)
        out = await run_in_threadpool(service.upscale, image, request)
        return image, out

    @app.post("/sdapi/v1/extra-single-image", tags=["a1111"], dependencies=guarded)
    async def extra_single_image(body: ExtrasSingle):
        request = _extras_request(body)
        image, out = await upscale_one(body.image, request, "image")
        return {"html_info": postprocess_parameters(image, _fields(image, out, request)), "image": _png(out)}

    @app.post("/sdapi/v1/extra-batch-images", tags=["a1111"], dependencies=guarded)
    async def extra_batch_images(body: ExtrasBatch):
        request = _extras_request(body)
        if not body.imageList:
            raise InvalidRequest("imageList must hold at least one {data, name} image")
        if len(body.imageList) > service.settings.limits.max_images:
            raise InvalidRequest(f"at most {service.settings.limits.max_images} images per request")
        images, info = [], ""
        for index, item in enumerate(body.imageList):
            image, out = await upscale_one(item.data, request, f"imageList[{index}]")
            images.append(_png(out))
            info = postprocess_parameters(image, _fields(image, out, request))
        return {"html_info": info, "images": images}

    @app.get("/api/v1/upscalers", tags=["native"], dependencies=guarded)
    def native_upscalers():
        """Upscalers by name with their native scale and kind (resample, builtin, file, ncnn)."""
        return [{"name": info.name, "scale": info.scale, "kind": info.kind}
                for info in upscalers.list_upscalers()]

    @app.post("/api/v1/upscale", tags=["native"], dependencies=guarded)
    async def upscale(body: UpscaleBody):
        """Upscale one base64 image now (not queued); returns it as base64 PNG."""
        fields = body.model_dump()
        data = fields.pop("image")
        request = UpscaleRequest(**fields).validate()
        started = time.perf_counter()
        _, out = await upscale_one(data, request, "image")
        return {"image": _png(out), "width": out.width, "height": out.height,
                "upscaler": upscalers.find(request.upscaler, paths=False).name,
                "seconds": round(time.perf_counter() - started, 3)}

    @app.get("/api/v1/recipes", tags=["native"], dependencies=guarded)
    def recipes():
        """The image recipes and their defaults."""
        return RECIPES

    @app.post("/api/v1/recipes/{name}", tags=["native"], dependencies=guarded, status_code=202)
    def recipe(name: str, body: RecipeBody):
        """Queue a recipe (colorize, restore, style) over a base64 image: a job like POST /api/v1/jobs."""
        if name not in RECIPES:
            raise InvalidRequest(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
        fields = body.model_dump()
        image = service.upload(fields.pop("image"), "image")
        if fields["mask"]:
            fields["mask"] = service.upload(fields["mask"], "mask")
        fields["loras"] = service.lora_paths(fields["loras"]) or None
        fields["init_upscaler"] = fields.pop("upscaler")
        structure, structure_model = fields.pop("structure"), fields.pop("structure_model")
        if structure_model:
            structure_model = service.control_model_path(structure_model)
        name_of_model = fields["model"]
        fields["model"] = service.model_path(name_of_model)
        extra = {"structure_model": structure_model} if name == "style" else {}
        request = service.engine.recipe(name, image, **extra, **fields)
        request.model = name_of_model  # submit resolves names (never paths from a client)
        if not structure:
            request.controls = []
        job = service.submit(request)
        return {"id": job.id, "status": job.status, "url": f"/api/v1/jobs/{job.id}",
                "events": f"/api/v1/jobs/{job.id}/events"}
