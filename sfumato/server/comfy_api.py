"""ComfyUI's HTTP and WebSocket API, on the same store, queue, limits and guards as every other dialect.

`POST /prompt` validates an API-format graph (`sfumato.comfy.graph`; a bad one is 400 with ComfyUI's `error` /
`node_errors`) and queues it as a job (`{"comfy": {...}}`, run by the worker through `sfumato.comfy.executor`).
`GET /history[/{id}]`, `/view`, `/queue`, `/object_info[/{class}]`, `/upload/image|mask`, `/interrupt`, `/free`,
`/system_stats`, `/embeddings`, `/models/{folder}` answer in ComfyUI's shapes, each also under `/api/`. The
WebSocket `/ws?clientId=` sends `status` on connect and whenever the queue changes, and for this client's prompts
`execution_start`, `execution_cached`, `executing`, `progress`, `executed`, `execution_success` /
`execution_error` / `execution_interrupted`, then `executing` with node null. Binary preview frames (ComfyUI's
PREVIEW_IMAGE: event 1, PNG) are sent only to a prompt whose `extra_data.preview_method` asks for them — ComfyUI's
default is `none`, and clients such as comfy-api-simplified treat any binary frame as an output image.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response

from sfumato.comfy.graph import GraphError, validate
from sfumato.comfy.names import IMAGE_SUFFIXES, Names
from sfumato.comfy.nodes import NODES
from sfumato.errors import InvalidRequest
from sfumato.server.store import FINAL, Job
from sfumato.version import __version__

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,120}$")
MAX_SOCKETS = 64
PREVIEW_METHODS = ("auto", "latent2rgb", "taesd")  # extra_data.preview_method that turns binary previews on
FRONTEND = "/comfy"
JOB_STATUS = {"queued": "pending", "running": "in_progress", "completed": "completed", "failed": "failed",
              "cancelled": "cancelled"}  # where --comfy-frontend serves ComfyUI's own web app
POLL_S = 0.1


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
        return {"exec_info": {"queue_remaining": _remaining(service)}}

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
        body = await _json(request)
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
            await _watch(service, websocket, client)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            counter["sockets"] -= 1

    for prefix in ("", "/api", *((FRONTEND,) if service.settings.comfy_frontend else ())):
        app.add_api_websocket_route(prefix + "/ws", socket)
    if service.settings.comfy_frontend:
        _frontend(app, guarded)


def frontend_static() -> Path:
    """The installed ComfyUI front end's files (`pip install comfyui-frontend-package`)."""
    try:
        import comfyui_frontend_package
    except ImportError:
        raise InvalidRequest("--comfy-frontend needs ComfyUI's front end: pip install comfyui-frontend-package "
                             "(GPL-3.0, the ComfyUI project's own web app)") from None
    return Path(comfyui_frontend_package.__file__).parent / "static"


def _frontend(app: FastAPI, guarded: list) -> None:
    """ComfyUI's front end at /comfy/ (its API calls go to /comfy/api/..., its socket to /comfy/ws), with the
    endpoints it needs to start answered minimally: one local user, settings kept in memory, no user files,
    no custom-node extensions."""
    from fastapi.staticfiles import StaticFiles

    static = frontend_static()
    settings: dict[str, Any] = {"Comfy.TutorialCompleted": True}  # open on the default workflow, not the tour
    api = FRONTEND + "/api"

    def get(path: str, value):
        app.add_api_route(api + path, lambda: value, methods=["GET"], dependencies=guarded, include_in_schema=False)

    get("/users", {"storage": "server", "migrated": True})
    get("/extensions", [])
    get("/i18n", {})
    get("/features", {"supports_preview_metadata": False})
    get("/experiment/models", [])
    get("/node_replacements", {})
    get("/global_subgraphs", {})
    get("/workflow_templates", {})
    get("/userdata", [])

    @app.get(api + "/settings", dependencies=guarded, include_in_schema=False)
    def all_settings():
        return settings

    @app.get(api + "/settings/{key}", dependencies=guarded, include_in_schema=False)
    def one_setting(key: str):
        return settings.get(key)

    @app.post(api + "/settings", dependencies=guarded, include_in_schema=False)
    async def post_settings(request: Request):
        body = await _json(request)
        settings.update({k: v for k, v in body.items() if isinstance(k, str) and len(k) < 200}
                        if len(settings) < 1000 else {})
        return Response(status_code=200)

    @app.post(api + "/settings/{key}", dependencies=guarded, include_in_schema=False)
    async def post_setting(key: str, request: Request):
        if len(settings) < 1000 and len(key) < 200:
            settings[key] = await request.json()
        return Response(status_code=200)

    @app.get(api + "/userdata/{name:path}", dependencies=guarded, include_in_schema=False)
    def user_file(name: str):
        raise HTTPException(404, "no user data on this server")

    @app.get(FRONTEND, include_in_schema=False)
    def redirect():
        from fastapi.responses import RedirectResponse

        return RedirectResponse(FRONTEND + "/")

    app.mount(FRONTEND, StaticFiles(directory=static, html=True), name="comfy-frontend")


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("the body is not JSON") from None
    return body if isinstance(body, dict) else {}


def _remaining(service) -> int:
    return sum(1 for j in service.store.queued() if "comfy" in j.request) + \
        sum(1 for j in service.store.recent(20) if j.status == "running" and "comfy" in j.request)


async def _send(websocket: WebSocket, kind: str, data: dict) -> None:
    await websocket.send_text(json.dumps({"type": kind, "data": data}))


async def _watch(service, websocket: WebSocket, client: str) -> None:
    """ComfyUI's events for this client's prompts, from the job store and the worker's progress."""
    remaining = _remaining(service)
    await _send(websocket, "status", {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": client})
    seen: dict[str, str] = {}  # prompt id -> last status reported
    last_node: dict[str, str | None] = {}
    last_step: dict[str, int] = {}
    started = time.time()
    receiver = asyncio.create_task(_drain(websocket))  # reads (and drops) what the client sends; ends on close
    try:
        while not receiver.done():
            now_remaining = _remaining(service)
            if now_remaining != remaining:
                remaining = now_remaining
                await _send(websocket, "status", {"status": {"exec_info": {"queue_remaining": remaining}}})
            mine = [j for j in service.store.recent(50) if "comfy" in j.request
                    and j.request["comfy"].get("client_id") == client and (j.finished or time.time()) >= started]
            for job in reversed(mine):
                await _report(service, websocket, job, seen, last_node, last_step)
            await asyncio.sleep(POLL_S)
    finally:
        receiver.cancel()


async def _drain(websocket: WebSocket) -> None:
    """Client messages (the front end's `feature_flags`, pings) are read and dropped until the socket closes."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _report(service, websocket, job: Job, seen: dict, last_node: dict, last_step: dict) -> None:
    pid = job.id
    before = seen.get(pid)
    if job.status == "queued" or before in FINAL:
        return
    now = int(time.time() * 1000)
    if before is None:
        await _send(websocket, "execution_start", {"prompt_id": pid, "timestamp": now})
        seen[pid] = "running"
    p = service.worker.progress
    if job.status == "running" and pid in p.job_ids:
        if p.node and p.node != last_node.get(pid):
            last_node[pid] = p.node
            await _send(websocket, "executing", {"node": p.node, "display_node": p.node, "prompt_id": pid})
        if p.total and p.step != last_step.get(pid):
            last_step[pid] = p.step
            await _send(websocket, "progress", {"value": p.step, "max": p.total, "prompt_id": pid, "node": p.node})
            extra = job.request["comfy"].get("extra_data") or {}
            if extra.get("preview_method") in PREVIEW_METHODS:  # asked for: binary PREVIEW_IMAGE frames (PNG)
                service.worker.watch()
                if p.preview_png and p.preview_step != last_step.get(pid + "/preview"):
                    last_step[pid + "/preview"] = p.preview_step
                    await websocket.send_bytes(struct.pack(">II", 1, 2) + p.preview_png)
        return
    if job.status not in FINAL:
        return
    seen[pid] = job.status
    result = job.result or {}
    if job.status == "completed":
        if result.get("cached"):
            await _send(websocket, "execution_cached", {"nodes": result["cached"], "prompt_id": pid, "timestamp": now})
        for node, images in (result.get("comfy_outputs") or {}).items():
            await _send(websocket, "executing", {"node": node, "display_node": node, "prompt_id": pid})
            await _send(websocket, "executed", {"node": node, "display_node": node, "output": {"images": images},
                                                "prompt_id": pid})
        await _send(websocket, "execution_success", {"prompt_id": pid, "timestamp": now})
    elif job.status == "failed":
        await _send(websocket, "execution_error", {
            "prompt_id": pid, "node_id": last_node.get(pid) or "", "node_type": "", "executed": [],
            "exception_message": job.error or "failed", "exception_type": "SfumatoError", "traceback": [],
            "current_inputs": {}, "current_outputs": {}})
    else:
        await _send(websocket, "execution_interrupted", {"prompt_id": pid, "node_id": last_node.get(pid) or "",
                                                         "node_type": "", "executed": []})
    await _send(websocket, "executing", {"node": None, "prompt_id": pid})
