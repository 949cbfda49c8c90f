"""ComfyUI's WebSocket events for one client (`/ws?clientId=`), from the job store and the worker's progress:
`status` on connect and whenever the queue changes; for this client's prompts `execution_start`, `executing` (node
by node), `progress` (sampling steps), `executed` (its images), `execution_cached`, `execution_success` /
`execution_error` / `execution_interrupted`, then `executing` with node null. Binary PREVIEW_IMAGE frames (event 1,
format 2, a PNG) only for prompts whose `extra_data.preview_method` asks for them. What the client sends is read and
dropped."""

from __future__ import annotations

import asyncio
import json
import struct
import time

from fastapi import WebSocket

from sfumato.server.store import FINAL, Job

PREVIEW_METHODS = ("auto", "latent2rgb", "taesd")  # extra_data.preview_method that turns binary previews on
POLL_S = 0.1


def remaining(service) -> int:
    return sum(1 for j in service.store.queued() if "comfy" in j.request) + \
        sum(1 for j in service.store.recent(20) if j.status == "running" and "comfy" in j.request)


async def _send(websocket: WebSocket, kind: str, data: dict) -> None:
    await websocket.send_text(json.dumps({"type": kind, "data": data}))


async def watch(service, websocket: WebSocket, client: str) -> None:
    """ComfyUI's events for this client's prompts, from the job store and the worker's progress."""
    left = remaining(service)
    await _send(websocket, "status", {"status": {"exec_info": {"queue_remaining": left}}, "sid": client})
    seen: dict[str, str] = {}  # prompt id -> last status reported
    last_node: dict[str, str | None] = {}
    last_step: dict[str, int] = {}
    started = time.time()
    receiver = asyncio.create_task(_drain(websocket))  # reads (and drops) what the client sends; ends on close
    try:
        while not receiver.done():
            now = remaining(service)
            if now != left:
                left = now
                await _send(websocket, "status", {"status": {"exec_info": {"queue_remaining": left}}})
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
