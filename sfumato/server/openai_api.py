"""OpenAI Images API: /v1/images/generations, /edits, /variations (sfumato extras as extra body fields)."""

from __future__ import annotations

import time

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest
from sfumato.server.uploads import alpha_to_mask, png_base64

VARIATION_STRENGTH = 0.6


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields we do not use (user, quality, style, ...)
    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: str = "b64_json"
    # sfumato extras (extra_body in the openai client)
    negative_prompt: str = ""
    seed: int = -1
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """'1024x1024' -> (1024, 1024); None/'auto' -> the model's native size."""
    if not size or size == "auto":
        return None, None
    width, x, height = size.lower().partition("x")
    if not x or not width.isdigit() or not height.isdigit():
        raise InvalidRequest(f"size must be WIDTHxHEIGHT or auto, got {size!r}")
    return int(width), int(height)


def add_routes(app: FastAPI, service, guarded: list) -> None:
    async def respond(http: Request, request: GenerationRequest, response_format: str) -> dict:
        if response_format not in ("b64_json", "url"):
            raise InvalidRequest("response_format must be b64_json or url")
        job = await run_in_threadpool(service.submit, request)
        done = await service.wait(job, http=http)
        data = []
        for image_id in done.result["images"]:
            if response_format == "url":
                data.append({"url": str(http.base_url).rstrip("/") + f"/api/v1/images/{image_id}.png"})
            else:
                data.append({"b64_json": png_base64(service.image_file(image_id))})
        return {"created": int(time.time()), "data": data}

    @app.post("/v1/images/generations", tags=["openai"], dependencies=guarded)
    async def generations(body: ImagesRequest, http: Request):
        width, height = parse_size(body.size)
        request = GenerationRequest(prompt=body.prompt, negative_prompt=body.negative_prompt, model=body.model,
                                    seed=body.seed, steps=body.steps, cfg_scale=body.cfg_scale, sampler=body.sampler,
                                    width=width, height=height, batch_size=body.n)
        return await respond(http, request, body.response_format)

    async def read_upload(upload: UploadFile, what: str):
        data = await upload.read(service.settings.limits.max_upload_bytes + 1)  # one byte over: "too large"
        return service.open_upload(data, what)

    @app.post("/v1/images/edits", tags=["openai"], dependencies=guarded)
    async def edits(http: Request, image: UploadFile = File(...), prompt: str = Form(...),
                    mask: UploadFile | None = File(None), model: str | None = Form(None), n: int = Form(1),
                    size: str | None = Form(None), response_format: str = Form("b64_json"),
                    negative_prompt: str = Form(""), seed: int = Form(-1), steps: int | None = Form(None),
                    cfg_scale: float | None = Form(None), sampler: str | None = Form(None)):
        picture = await read_upload(image, "image")
        # OpenAI: the mask's (or else the image's) fully transparent pixels are the ones to edit
        mask_source = await read_upload(mask, "mask") if mask is not None else picture
        if mask_source.size != picture.size:
            raise InvalidRequest(f"mask size {mask_source.size} differs from image size {picture.size}")
        if "A" not in mask_source.getbands():
            raise InvalidRequest("the mask (or the image, when no mask is sent) needs an alpha channel: "
                                 "transparent pixels mark the area to edit")
        width, height = parse_size(size)
        request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, model=model, seed=seed,
                                    steps=steps, cfg_scale=cfg_scale, sampler=sampler, width=width, height=height,
                                    batch_size=n, init_image=service.keep(picture),
                                    mask=service.keep(alpha_to_mask(mask_source)), strength=1.0)
        return await respond(http, request, response_format)

    @app.post("/v1/images/variations", tags=["openai"], dependencies=guarded)
    async def variations(http: Request, image: UploadFile = File(...), model: str | None = Form(None),
                         n: int = Form(1), size: str | None = Form(None), response_format: str = Form("b64_json"),
                         seed: int = Form(-1), steps: int | None = Form(None), prompt: str = Form("")):
        picture = await read_upload(image, "image")
        width, height = parse_size(size)
        request = GenerationRequest(prompt=prompt, model=model, seed=seed, steps=steps, width=width, height=height,
                                    batch_size=n, init_image=service.keep(picture),
                                    strength=VARIATION_STRENGTH)
        return await respond(http, request, response_format)
