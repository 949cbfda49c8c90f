"""The native jobs API: `POST /api/v1/jobs` and `POST /api/v1/views` (a view sheet), job status, cancel,
Server-Sent Events, token counts and lists."""

from __future__ import annotations

import asyncio
import json

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from sfumato.errors import InvalidRequest

from sfumato.server.store import FINAL, Job
from sfumato.server.wire import JobRequest, TokensRequest
from sfumato.server.service import Service


class ViewsRequest(BaseModel):
    """`POST /api/v1/views`: the subject, its views, an optional reference (base64) and any job settings."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    views: list[str] | str = "front,side,back"
    reference: str | None = None
    reference_weight: float = 1.0
    consistent: float = 1.0
    settings: dict[str, Any] = {}  # native job fields (seed, steps, model, negative_prompt, width, height, ...)


def add_routes(app: FastAPI, service: Service, guarded: list) -> None:
    @app.post("/api/v1/jobs", tags=["native"], dependencies=guarded, status_code=202)
    def create_job(body: JobRequest):
        job = service.submit(service.request_from_wire(body.model_dump()))
        return {"id": job.id, "status": job.status, "url": f"/api/v1/jobs/{job.id}",
                "events": f"/api/v1/jobs/{job.id}/events"}

    @app.post("/api/v1/views", tags=["native"], dependencies=guarded, status_code=202)
    def create_views(body: ViewsRequest):
        """A character / multi-view sheet (`sfumato views`) as one job: its images are the views, in order."""
        from sfumato.views import parse_views, views_request

        names = parse_views(body.views)
        try:
            settings = JobRequest(**{**body.settings, "prompt": body.prompt})
        except ValidationError as error:
            first = error.errors()[0]
            raise InvalidRequest(f"settings.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        base = service.request_from_wire(settings.model_dump())
        reference = service.upload(body.reference, "reference image") if body.reference else None
        job = service.submit(views_request(base, names, reference, body.consistent, body.reference_weight))
        return {"id": job.id, "status": job.status, "url": f"/api/v1/jobs/{job.id}",
                "events": f"/api/v1/jobs/{job.id}/events", "views": names}

    def get_or_404(job_id: str) -> Job:
        job = service.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        return job

    @app.post("/api/v1/tokens", tags=["native"], dependencies=guarded)
    def tokens(body: TokensRequest):
        """Tokens per chunk of a prompt with the model's own tokenizer (for the UI's counter)."""
        counts, length, texts = service.engine.token_counts(body.prompt, service.model_path(body.model))
        return {"chunks": counts, "chunk_length": length, "scheduled": texts}

    @app.get("/api/v1/ip-adapters", tags=["native"], dependencies=guarded)
    def ip_adapters():
        from sfumato.control.ip_adapter import ip_adapter_dir

        folder = ip_adapter_dir()
        return {"ip_adapters": sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []}

    @app.get("/api/v1/loras", tags=["native"], dependencies=guarded)
    def loras():
        return {"loras": sorted(service.loras)}

    @app.get("/api/v1/jobs", tags=["native"], dependencies=guarded)
    def list_jobs(limit: int = 50):
        p = service.worker.progress
        jobs = []
        for job in service.store.recent(max(1, min(limit, 500))):
            out = service.names.record(job.to_dict())
            if job.status == "running" and job.id in p.job_ids:  # the Queue view's live progress
                out["progress"] = {"step": p.step, "total": p.total}
            jobs.append(out)
        return {"jobs": jobs}

    @app.get("/api/v1/jobs/{job_id}", tags=["native"], dependencies=guarded)
    def get_job(job_id: str):
        job = get_or_404(job_id)
        out = service.names.record(job.to_dict())
        p = service.worker.progress
        if job.status == "running" and job_id in p.job_ids:
            out["progress"] = {"step": p.step, "total": p.total}
        return out

    @app.delete("/api/v1/jobs/{job_id}", tags=["native"], dependencies=guarded)
    def cancel_job(job_id: str):
        job = get_or_404(job_id)
        if not service.worker.cancel(job_id):
            raise HTTPException(409, f"job {job_id} already {job.status}")
        return {"id": job_id, "status": "cancelled"}

    @app.get("/api/v1/jobs/{job_id}/events", tags=["native"], dependencies=guarded)
    async def job_events(job_id: str):
        get_or_404(job_id)
        return StreamingResponse(_events(service, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(service: Service, job_id: str):
    """Server-Sent Events: queued, progress (step, total, preview), then completed | failed | cancelled."""
    import base64

    def event(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    last: tuple | None = None
    sent_queued = False
    while True:
        job = service.store.get(job_id)
        if job.status == "queued" and not sent_queued:
            waiting = [j.id for j in service.store.queued()]  # it may have started meanwhile (another replica)
            yield event("queued", {"id": job_id, "position": waiting.index(job_id) if job_id in waiting else 0})
            sent_queued = True
        elif job.status == "running":
            service.worker.watch()
            p = service.worker.progress
            if job_id in p.job_ids and (p.step, p.total, p.preview_step) != last:
                last = (p.step, p.total, p.preview_step)
                data = {"id": job_id, "step": p.step, "total": p.total}
                if p.preview_png:
                    data["preview"] = base64.b64encode(p.preview_png).decode()
                yield event("progress", data)
        elif job.status in FINAL:
            yield event(job.status, service.names.record(job.to_dict()))
            return
        await asyncio.sleep(0.1)
