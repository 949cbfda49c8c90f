"""The FastAPI application, the composition root: middlewares (browser guard, request gate), error handlers and
every dialect's routes over one `Service`.

Dialects (`openai_api`, `a1111`) only translate their wire format into `GenerationRequest`s and
call `Service.submit` / `Service.wait`; no generation logic lives in a route.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from sfumato.version import __version__
from sfumato.errors import SfumatoError
from sfumato.server.errors import error_body
from sfumato.server.gate import RequestGate, key_matches
from sfumato.server.guard import BrowserGuard, HostPolicy
from sfumato.server.settings import ServerSettings
from sfumato.server.store import FINAL
from sfumato.server.service import Service, log

def create_app(settings: ServerSettings) -> FastAPI:
    from contextlib import asynccontextmanager

    settings.check()
    service = Service(settings)
    service.load_default_model()  # a server whose model cannot load refuses to start (one line from the CLI)

    @asynccontextmanager
    async def lifespan(_app):
        service.worker.start()
        yield
        service.worker.stop()
        service.store.close()

    app = FastAPI(title="sfumato", version=__version__, lifespan=lifespan,
                  description="OpenAI Images, AUTOMATIC1111 /sdapi/v1 and native jobs APIs over one engine.")
    app.state.service = service

    # innermost of the three: the API key and the body budget before any route reads the body
    app.add_middleware(RequestGate, api_key=settings.api_key, limits=settings.limits)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    # outermost: no route, static file or error handler runs for a forged Host or a cross-site write
    app.add_middleware(BrowserGuard, policy=HostPolicy(settings.host, settings.allowed_hosts, settings.cors_origins))

    @app.exception_handler(SfumatoError)
    async def _sfumato_error(_request: Request, exc: SfumatoError):
        return JSONResponse(error_body(service.names.text(str(exc)), type(exc).__name__, exc.http_status),
                            status_code=exc.http_status)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):  # a bug of ours: logged, never shown as a traceback
        log.error("unhandled error:\n%s", "".join(traceback.format_exception(exc)))
        return JSONResponse(error_body("internal server error (see the server log)", "server_error", 500),
                            status_code=500)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException):
        return JSONResponse(error_body(service.names.text(str(exc.detail)), "http_error", exc.status_code),
                            status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
        body = error_body(message, "invalid_request_error", 422)
        body["errors"] = json.loads(json.dumps(exc.errors(), default=str))
        return JSONResponse(body, status_code=422)

    def authorize(request: Request) -> None:  # the gate checked it before the body; kept for routes' docs and tests
        if settings.api_key and not key_matches(request.headers.get("authorization", ""), settings.api_key):
            raise HTTPException(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorize)]

    @app.get("/healthz", tags=["server"])
    def healthz():
        if settings.api_key:  # a keyed server tells strangers nothing about itself
            return {"status": "ok"}
        return {"status": "ok", "version": __version__, "model": service.current_model,
                "recovered_jobs": service.store.recovered, "replica": service.store.owner}

    @app.get("/metrics", tags=["server"], dependencies=guarded, response_class=PlainTextResponse)
    def metrics():
        counts = service.store.counts()
        p = service.worker.progress
        lines = ["# HELP sfumato_queue_depth Jobs waiting to run.", "# TYPE sfumato_queue_depth gauge",
                 f"sfumato_queue_depth {counts.get('queued', 0)}",
                 "# HELP sfumato_jobs_running Jobs running now.", "# TYPE sfumato_jobs_running gauge",
                 f"sfumato_jobs_running {counts.get('running', 0)}",
                 "# HELP sfumato_jobs_total Finished jobs by status.", "# TYPE sfumato_jobs_total counter"]
        lines += [f'sfumato_jobs_total{{status="{s}"}} {counts.get(s, 0)}' for s in FINAL]
        lines += ["# HELP sfumato_step_seconds Time per denoising step (whole batch).",
                  "# TYPE sfumato_step_seconds summary", f"sfumato_step_seconds_sum {p.step_seconds:.6f}",
                  f"sfumato_step_seconds_count {p.steps_done}"]
        return "\n".join(lines) + "\n"

    @app.get("/api/v1/images/{image_id}.png", tags=["native"], dependencies=guarded)
    def image(image_id: str):
        return FileResponse(service.image_file(image_id), media_type="image/png")

    _ui_routes(app)
    from sfumato.server import (a1111, a1111_info, animation_api, comfy_api, controlnet_api, extras_api, native_api,
                                openai_api, tools_api)

    native_api.add_routes(app, service, guarded)

    openai_api.add_routes(app, service, guarded)
    a1111.add_routes(app, service, guarded)
    a1111_info.add_routes(app, service, guarded)
    controlnet_api.add_routes(app, service, guarded)
    extras_api.add_routes(app, service, guarded)
    tools_api.add_routes(app, service, guarded)
    animation_api.add_routes(app, service, guarded)
    comfy_api.add_routes(app, service, guarded)
    return app


STATIC = Path(__file__).with_name("static")


def _ui_routes(app: FastAPI) -> None:
    """The browser UI: static files that use only the public APIs (no key needed to load the page itself)."""
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")


