"""ComfyUI's own web front end (`comfyui-frontend-package`, installed by the user) at /comfy/: its API calls go to
/comfy/api/... (the ComfyUI routes of `server.comfy_api`, registered there under that prefix too), its socket to
/comfy/ws; what it needs to start is answered here minimally — one local user, settings kept in memory (the tutorial
marked done, so it opens on a workflow), no user files, no custom-node extensions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from sfumato.errors import InvalidRequest
from sfumato.server.wire import json_object

FRONTEND = "/comfy"


def frontend_static() -> Path:
    """The installed ComfyUI front end's files (`pip install comfyui-frontend-package`)."""
    try:
        import comfyui_frontend_package
    except ImportError:
        raise InvalidRequest("--comfy-frontend needs ComfyUI's front end: pip install comfyui-frontend-package "
                             "(GPL-3.0, the ComfyUI project's own web app)") from None
    return Path(comfyui_frontend_package.__file__).parent / "static"


def add_frontend(app: FastAPI, guarded: list) -> None:
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
        body = await json_object(request)
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
