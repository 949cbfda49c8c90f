"""Animations over HTTP: `POST /api/v1/animations` queues an animation job on the same queue, store and event stream
as image jobs. The finished job lists its frames (`/api/v1/images/ID-K.png`, each with its generation record), its
videos (`/api/v1/videos/ID.gif|webp|mp4`) and the temporal metrics. Images and videos arrive as base64; models,
LoRAs and motion modules are names, never paths."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sfumato.animation.request import AnimationRequest
from sfumato.animation.run import preflight
from sfumato.errors import InvalidRequest, ModelNotFound
from sfumato.server.uploads import UploadTooLarge, decode_base64, store_bytes

Schedule = float | str | dict[str, float]
VIDEO_NAME = re.compile(r"^[0-9a-f]{32}\.(gif|webp|mp4)$")
MEDIA_TYPES = {"gif": "image/gif", "webp": "image/webp", "mp4": "video/mp4"}
VIDEO_MAGIC = ((b"GIF8", ".gif"), (b"\x1aE\xdf\xa3", ".webm"))


class AnimationBody(BaseModel):
    """`AnimationRequest` on the wire: `generation` takes the native job fields (POST /api/v1/jobs)."""

    model_config = ConfigDict(extra="forbid")
    generation: dict[str, Any] = Field(default_factory=dict, description="generation settings shared by every frame")
    mode: str = "travel"
    frames: int | None = Field(None, description="default 16; video mode: every input frame (up to the server's "
                                                "frame limit)")
    fps: float = 8.0
    prompts: dict[str, str] | str = Field(default_factory=dict, description='{"0": "a red apple", "24": "a pear"}')
    seeds: dict[str, int] | str = Field(default_factory=dict)
    loop: bool = False
    direction_strength: Schedule = 1.0
    strength: Schedule = 0.5
    zoom: Schedule = 1.0
    angle: Schedule = 0.0
    translation_x: Schedule = 0.0
    translation_y: Schedule = 0.0
    color_coherence: bool = True
    seed_behavior: str = "iter"
    init_image: str | None = Field(None, description="loopback: the first frame (base64)")
    video: str | None = Field(None, description="video mode: MP4/WebM/GIF/WebP (base64)")
    subject: str = ""
    scenes: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list, description="interpolate: two images; video-model: the "
                              "first frame (base64)")
    inversion_steps: int = 50
    motion_adapter: str | None = Field(None, description="a name from GET /api/v1/motion-modules")
    motion_loras: list[tuple[str, float]] = Field(default_factory=list, description="names from GET /api/v1/loras")
    context_length: int = 16
    context_overlap: int = 4
    formats: list[str] = Field(default_factory=lambda: ["gif", "mp4"])


def motion_modules() -> dict[str, Path]:
    from sfumato.animation.animatediff import motion_dir

    folder = motion_dir()
    if not folder.is_dir():
        return {}
    return {p.stem if p.is_file() else p.name: p for p in sorted(folder.iterdir())
            if p.suffix == ".safetensors" or (p.is_dir() and (p / "config.json").is_file())}


def _store_video(service, data: str) -> str:
    """A base64 video stored in the uploads folder under its container's suffix (MP4/MOV, WebM, GIF, WebP)."""
    limits = service.settings.limits
    raw = decode_base64(data, limits, "video")
    if len(raw) > limits.max_upload_bytes:
        raise UploadTooLarge(f"video is larger than {limits.max_upload_bytes // 2**20} MiB")
    suffix = next((s for magic, s in VIDEO_MAGIC if raw.startswith(magic)), None)
    if raw[4:8] == b"ftyp":
        suffix = ".mp4"
    elif raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        suffix = ".webp"
    if suffix is None:
        raise InvalidRequest("video must be MP4, WebM, GIF or WebP")
    return store_bytes(raw, service.store.uploads_dir, suffix)


def request_from_body(service, body: AnimationBody) -> AnimationRequest:
    """Wire names and base64 data -> an animation request with paths inside the server's folders."""
    generation = service.request_from_wire(_job_fields(body.generation))
    fields = body.model_dump(exclude={"generation"})
    if fields["frames"] is None:
        fields["frames"] = service.settings.limits.max_frames if body.mode == "video" else \
            17 if body.mode == "video-model" else 16
    if body.init_image:
        fields["init_image"] = service.upload(body.init_image, "init_image")
    if body.video:
        fields["video"] = _store_video(service, body.video)
    fields["images"] = [service.upload(image, f"images[{k}]") for k, image in enumerate(body.images)]
    if body.motion_adapter is not None:
        listed = motion_modules()
        if body.motion_adapter not in listed:
            raise ModelNotFound(f"motion module {body.motion_adapter!r} not found (GET /api/v1/motion-modules "
                                "lists the names)")
        fields["motion_adapter"] = str(listed[body.motion_adapter])
    fields["motion_loras"] = service.lora_paths(body.motion_loras)
    return AnimationRequest(generation, **fields).validate()


def _job_fields(generation: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from sfumato.server.wire import JobRequest

    try:
        return JobRequest(**{"prompt": "", **generation}).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"generation.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def submit(service, request: AnimationRequest):
    """Check the limits and what the first frame needs (model, LoRAs, prompt policy), then queue the job."""
    limits = service.settings.limits
    if request.frames > limits.max_frames:
        raise InvalidRequest(f"{request.frames} frames requested; at most {limits.max_frames} per animation")
    generation = dataclasses.replace(request.generation, model=service.model_path(request.generation.model),
                                     vae=service.vae_path(request.generation.vae))
    if len(request.scenes) > limits.max_frames:
        raise InvalidRequest(f"{len(request.scenes)} scenes; at most {limits.max_frames} per animation")
    for key, text in request.prompts.items():
        limits.check_text(text, f"keyframe {key}")
    for index, text in enumerate(request.scenes):
        limits.check_text(text, f"scene {index}")
    limits.check_text(request.subject, "subject")
    service.check_limits(generation)
    service.check_limits(preflight(service.engine, dataclasses.replace(request, generation=generation)))
    for path in (request.init_image, *request.images[:1]):  # frames take this image's size unless one is given
        if path and (generation.width is None or generation.height is None):
            with Image.open(path) as image:
                width, height = image.size
            limits.check_size(generation.width or width // 8 * 8, generation.height or height // 8 * 8,
                              "an animation frame")
    request.generation = generation
    return service.enqueue({"animation": request.to_dict()})


def add_routes(app: FastAPI, service, guarded: list) -> None:
    @app.post("/api/v1/animations", tags=["native"], dependencies=guarded, status_code=202)
    def create_animation(body: AnimationBody):
        """Queue an animation (travel, loopback, video, story, interpolate, motion); poll or stream the job."""
        job = submit(service, request_from_body(service, body))
        return {"id": job.id, "status": job.status, "url": f"/api/v1/jobs/{job.id}",
                "events": f"/api/v1/jobs/{job.id}/events"}

    @app.get("/api/v1/motion-modules", tags=["native"], dependencies=guarded)
    def list_motion_modules():
        return {"motion_modules": sorted(motion_modules())}

    @app.get("/api/v1/videos/{name}", tags=["native"], dependencies=guarded)
    def video(name: str):
        path = service.store.data_dir / "videos" / name
        if not VIDEO_NAME.match(name) or not path.is_file():
            raise HTTPException(404, "video not found")
        return FileResponse(path, media_type=MEDIA_TYPES[name.rsplit(".", 1)[1]])
