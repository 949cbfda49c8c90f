"""ComfyUI's HTTP and WebSocket API, on the same store, queue, limits and guards as every other dialect.

`POST /prompt` validates an API-format graph (`sfumato.comfy.graph`; a bad one is 400 with ComfyUI's `error` /
`node_errors`) and queues it as a job (`{"comfy": {...}}`, run by the worker through `sfumato.comfy.executor`).
`GET /history[/{id}]`, `/view`, `/queue`, `/jobs[/{id}]`, `/object_info[/{class}]`, `/upload/image|mask`,
`/interrupt`, `/free`, `/system_stats`, `/embeddings`, `/models/{folder}` answer in ComfyUI's shapes, each also under
`/api/`. The WebSocket `/ws?clientId=` streams ComfyUI's events (`server.comfy_socket`); `--comfy-frontend` adds
ComfyUI's own web app at /comfy/ (`server.comfy_frontend`).
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response

from sfumato.comfy.graph import GraphError, validate
from sfumato.comfy.names import IMAGE_SUFFIXES, Names
from sfumato.comfy.nodes import NODES
from sfumato.errors import InvalidRequest
from sfumato.server.wire import json_object
from sfumato.server.comfy_frontend import FRONTEND, add_frontend
from sfumato.server.comfy_socket import remaining, watch
from sfumato.server.store import FINAL, Job
from sfumato.version import __version__

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,120}$")
MAX_SOCKETS = 64
JOB_STATUS = {"queued": "pending", "running": "in_progress", "completed": "completed", "failed": "failed",
              "cancelled": "cancelled"}  # ComfyUI's Jobs API names


def comfy_names(service) -> Names:
    """The server's lists in ComfyUI's terms (listed names only; input images from data_dir/input)."""
    from sfumato.upscale.upscalers import list_upscalers

    home = Names.from_home()  # diffusion models and text encoders by folder; the rest as the server lists them
    return Names(checkpoints=dict(service.models), loras=dict(service.loras), vae=dict(service.vaes),
                 controlnet=dict(service.control_models),
                 upscale_models={u.name: u.name for u in list_upscalers() if u.kind != "resample"},
                 diffusion_models=home.diffusion_models, text_encoders=home.text_encoders,
                 input_dir=service.settings.data_dir / "input", allow_paths=False)


def add_routes(app: FastAPI, service, guarded: list) -> None:
    input_dir = service.settings.data_dir / "input"
    service.worker.comfy_names = lambda: comfy_names(service)
    service.worker.comfy_check = service.check_limits
    counter = {"number": 0, "sockets": 0}

    prefixes = ("", "/api", FRONTEND + "/api") if service.settings.comfy_frontend else ("", "/api")

    def route(method: str, path: str, **kwargs):
        def register(function):
            for prefix in prefixes:
                app.add_api_route(prefix + path, function, methods=[method], tags=["comfyui"],
                                  dependencies=guarded, **kwargs)
            return function
        return register

    @route("POST", "/prompt")
    async def post_prompt(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"type": "invalid_prompt", "message": "the body is not JSON",
                                           "details": "", "extra_info": {}}, "node_errors": {}}, 400)
        if not isinstance(body, dict) or "prompt" not in body:
            return JSONResponse({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "",
                                           "extra_info": {}}, "node_errors": {}}, 400)
        try:
            outputs = validate(body["prompt"], comfy_names(service).lists())
        except GraphError as exc:
            return JSONResponse(exc.body, 400)
        extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else None
        counter["number"] += 1
        number = body.get("number", counter["number"])
        record = {"comfy": {"prompt": body["prompt"], "client_id": client_id, "extra_data": extra,
                            "number": number if isinstance(number, (int, float)) else counter["number"],
                            "outputs": outputs}}
        job = service.enqueue(record)
        return {"prompt_id": job.id, "number": record["comfy"]["number"], "node_errors": {}}

    @route("GET", "/prompt")
    def get_prompt():
        return {"exec_info": {"queue_remaining": remaining(service)}}

    def history_entry(job: Job) -> dict[str, Any]:
        comfy = job.request["comfy"]
        status = {"completed": "success", "failed": "error", "cancelled": "error"}.get(job.status, job.status)
        messages = [["execution_start", {"prompt_id": job.id, "timestamp": int((job.started or job.created) * 1000)}]]
        if job.status == "completed":
            messages.append(["execution_success", {"prompt_id": job.id, "timestamp": int((job.finished or 0) * 1000)}])
        elif job.status in ("failed", "cancelled"):
            messages.append(["execution_error" if job.status == "failed" else "execution_interrupted",
                             {"prompt_id": job.id, "exception_message": job.error or "cancelled"}])
        outputs = {node: {"images": images} for node, images in ((job.result or {}).get("comfy_outputs") or {}).items()}
        return {"prompt": [comfy["number"], job.id, comfy["prompt"], comfy.get("extra_data", {}), comfy["outputs"]],
                "outputs": outputs, "status": {"status_str": status, "completed": job.status == "completed",
                                               "messages": messages}, "meta": {}}

    @route("GET", "/history")
    def get_history(max_items: int | None = None):
        jobs = [j for j in service.store.recent(max(1, min(max_items or 200, 1000))) if "comfy" in j.request
                and j.status in FINAL]
        return {job.id: history_entry(job) for job in reversed(jobs)}

    @route("GET", "/history/{prompt_id}")
    def get_history_item(prompt_id: str):
        job = service.store.get(prompt_id)
        if job is None or "comfy" not in job.request or job.status not in FINAL:
            return {}
        return {job.id: history_entry(job)}

    @route("POST", "/history")
    async def post_history(request: Request):
        return Response(status_code=200)  # the job store keeps its records; clearing is not offered

    def queue_item(job: Job) -> list:
        comfy = job.request["comfy"]
        return [comfy["number"], job.id, comfy["prompt"], comfy.get("extra_data", {}), comfy["outputs"]]

    @route("GET", "/queue")
    def get_queue():
        running = [j for j in service.store.recent(50) if j.status == "running" and "comfy" in j.request]
        pending = [j for j in service.store.queued() if "comfy" in j.request]
        return {"queue_running": [queue_item(j) for j in running], "queue_pending": [queue_item(j) for j in pending]}

    @route("POST", "/queue")
    async def post_queue(request: Request):
        body = await json_object(request)
        targets = []
        if body.get("clear"):
            targets = [j.id for j in service.store.queued() if "comfy" in j.request]
        targets += [str(i) for i in body.get("delete", []) if isinstance(i, str)]
        for job_id in targets:
            job = service.store.get(job_id)
            if job is not None and "comfy" in job.request and job.status == "queued":
                service.worker.cancel(job_id)
        return Response(status_code=200)

    def job_summary(job: Job) -> dict[str, Any]:
        """ComfyUI's Jobs API record of a prompt (what its newer front end lists)."""
        result = job.result or {}
        outputs = result.get("comfy_outputs") or {}
        first = next(((node, images[0]) for node, images in outputs.items() if images), None)
        count = sum(len(images) for images in outputs.values())
        error = None
        if job.status == "failed":
            error = {"node_id": "", "node_type": "", "executed": [], "exception_message": job.error or "failed",
                     "exception_type": "SfumatoError", "traceback": [], "current_inputs": {}, "current_outputs": {}}
        return {"id": job.id, "status": JOB_STATUS[job.status], "create_time": int(job.created * 1000),
                "execution_start_time": int(job.started * 1000) if job.started else None,
                "execution_end_time": int(job.finished * 1000) if job.finished else None,
                "preview_output": {**first[1], "nodeId": first[0], "mediaType": "images"} if first else None,
                "outputs_count": count, "previewable_outputs_count": count, "execution_error": error,
                "workflow_id": None, "priority": job.request["comfy"].get("number", 0)}

    @route("GET", "/jobs")
    def list_jobs(status: str = "", limit: int = 200, offset: int = 0):
        wanted = {s for s in status.split(",") if s} or set(JOB_STATUS.values())
        limit, offset = max(1, min(limit, 500)), max(0, min(offset, 10_000))
        jobs = [j for j in service.store.queued() if "comfy" in j.request] + \
            [j for j in service.store.recent(1000) if "comfy" in j.request and j.status != "queued"]
        matching = [job_summary(j) for j in jobs if JOB_STATUS.get(j.status) in wanted]
        page = matching[offset:offset + limit]
        return {"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(matching),
                                             "has_more": offset + len(page) < len(matching)}}

    @route("GET", "/jobs/{job_id}")
    def job_detail(job_id: str):
        job = service.store.get(job_id)
        if job is None or "comfy" not in job.request:
            raise HTTPException(404, f"job {job_id} not found")
        comfy = job.request["comfy"]
        outputs = ((job.result or {}).get("comfy_outputs") or {})
        return {**job_summary(job), "workflow": {"prompt": comfy["prompt"], "extra_data": comfy.get("extra_data", {})},
                "outputs": {node: {"images": images} for node, images in outputs.items()}}

    @route("POST", "/interrupt")
    def post_interrupt():
        for job_id in list(service.worker.progress.job_ids):
            job = service.store.get(job_id)
            if job is not None and "comfy" in job.request:
                service.worker.cancel(job_id)
        return Response(status_code=200)

    @route("POST", "/free")
    def post_free():
        return Response(status_code=200)  # the engine keeps what it needs loaded; nothing to free on request

    @route("GET", "/view")
    def view(filename: str, type: str = "output", subfolder: str = ""):
        if not SAFE_NAME.match(filename) or ".." in filename or (subfolder and (
                not SAFE_NAME.match(subfolder) or ".." in subfolder or type != "input")):
            raise HTTPException(404, "not found")
        if type == "input":
            path = input_dir / subfolder / filename
            if not path.is_file():
                raise HTTPException(404, "not found")
            return FileResponse(path)
        if type not in ("output", "temp") or not filename.endswith(".png"):
            raise HTTPException(404, "not found")
        return FileResponse(service.image_file(filename[:-4]), media_type="image/png")

    async def upload(request: Request, what: str) -> dict:
        form = await request.form()
        file = form.get("image")
        if not isinstance(file, UploadFile) and not hasattr(file, "read"):
            raise InvalidRequest("the form needs an `image` file")
        name = Path(file.filename or "upload.png").name
        if not SAFE_NAME.match(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidRequest(f"{what} name {name!r}: use letters, digits, '._-()+ ' and .png/.jpg/.webp")
        subfolder = str(form.get("subfolder", "") or "")
        if subfolder and (not SAFE_NAME.match(subfolder) or ".." in subfolder):
            raise InvalidRequest(f"subfolder {subfolder!r}: one folder name of letters, digits and '._-()+ '")
        data = await file.read()
        service.open_upload(data, what)  # decodes within the upload limits, or refuses
        folder = input_dir / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if target.exists() and str(form.get("overwrite", "")).lower() not in ("true", "1") \
                and target.read_bytes() != data:
            stem, suffix, k = target.stem, target.suffix, 1
            while (folder / f"{stem} ({k}){suffix}").exists():
                k += 1
            target = folder / f"{stem} ({k}){suffix}"
        target.write_bytes(data)
        return {"name": target.name, "subfolder": subfolder, "type": "input"}

    @route("POST", "/upload/image")
    async def upload_image(request: Request):
        return await upload(request, "image")

    @route("POST", "/upload/mask")
    async def upload_mask(request: Request):
        return await upload(request, "mask")

    @route("GET", "/object_info")
    def object_info():
        lists = comfy_names(service).lists()
        return {name: node.info(name, lists) for name, node in NODES.items()}

    @route("GET", "/object_info/{node_class}")
    def object_info_node(node_class: str):
        if node_class not in NODES:
            return {}
        return {node_class: NODES[node_class].info(node_class, comfy_names(service).lists())}

    @route("GET", "/system_stats")
    def system_stats():
        import torch

        device = service.engine.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return {"system": {"os": sys.platform, "comfyui_version": f"sfumato {__version__}",
                           "python_version": sys.version, "pytorch_version": torch.__version__,
                           "embedded_python": False, "argv": []},
                "devices": [{"name": str(device), "type": str(device).split(":")[0], "index": 0,
                             "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0}]}

    @route("GET", "/embeddings")
    def embeddings():
        from sfumato.models.home import embeddings_dir

        folder = embeddings_dir()
        return sorted(p.stem for p in folder.iterdir() if p.suffix == ".safetensors") if folder.is_dir() else []

    @route("GET", "/models")
    def model_folders():
        return ["checkpoints", "loras", "vae", "controlnet", "upscale_models"]

    @route("GET", "/models/{folder}")
    def models(folder: str):
        lists = comfy_names(service).lists()
        if folder not in lists or folder == "input":
            raise HTTPException(404, f"no model folder {folder!r}")
        return lists[folder]

    async def socket(websocket: WebSocket, clientId: str | None = None):  # noqa: N803 (ComfyUI's name)
        if counter["sockets"] >= MAX_SOCKETS:
            await websocket.close(code=1013)
            return
        counter["sockets"] += 1
        client = clientId if clientId and len(clientId) <= 200 else uuid.uuid4().hex
        try:
            await websocket.accept()
            await watch(service, websocket, client)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            counter["sockets"] -= 1

    for prefix in ("", "/api", *((FRONTEND,) if service.settings.comfy_frontend else ())):
        app.add_api_websocket_route(prefix + "/ws", socket)
    if service.settings.comfy_frontend:
        add_frontend(app, guarded)



