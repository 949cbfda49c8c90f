"""The request gate: the API key and the body budget, checked before any route reads a byte of the body.

FastAPI reads and parses a body before it runs a route's dependencies, so a key check in a dependency comes too
late: a 300 MB body sent without a key would be read (and its JSON parsed, ~3x its size in memory) before the 401.
This ASGI middleware runs first instead:

1. with an API key set, every route except the UI's static page, `/healthz` and the API docs needs
   `Authorization: Bearer KEY` (401 at once, body unread);
2. a body larger than its route's budget is refused with 413: at once when `Content-Length` says so, and while it
   streams in otherwise (chunked bodies are counted, never buffered past the budget).

Routes that take images (base64 JSON or multipart uploads) get `Limits.max_body_bytes`; every other route
`Limits.max_text_body_bytes`.
"""

from __future__ import annotations

import base64
import hmac

from fastapi import HTTPException

from sfumato.limits import Limits
from sfumato.server.errors import refuse

PUBLIC_PATHS = ("/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PUBLIC_PREFIXES = ("/ui/",)
# routes whose bodies carry images; every other route's body is text only
IMAGE_ROUTES = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info", "/sdapi/v1/extra-single-image",
                "/sdapi/v1/extra-batch-images", "/controlnet/detect", "/v1/images/edits", "/v1/images/variations",
                "/api/v1/jobs", "/api/v1/animations", "/api/v1/upscale", "/api/v1/recipes/", "/upload/image",
                "/upload/mask", "/api/upload/image", "/api/upload/mask", "/comfy/api/upload/image",
                "/comfy/api/upload/mask", "/api/v1/views")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than this route's limit of {_size(limit)}")


def key_matches(header: str, key: str) -> bool:
    """`Authorization: Bearer KEY` — or HTTP Basic with the key as the password (ComfyUI clients send user and
    password) — compared in constant time."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            token = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(token.encode(), key.encode())
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def is_public(path: str) -> bool:
    if path.startswith("/comfy/"):  # ComfyUI's front end: its files are public, its API is not
        return not path.startswith(("/comfy/api/", "/comfy/ws", "/comfy/internal"))
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def body_budget(path: str, limits: Limits) -> int:
    takes_images = any(path == r or (r.endswith("/") and path.startswith(r)) for r in IMAGE_ROUTES)
    return limits.max_body_bytes if takes_images else limits.max_text_body_bytes


class RequestGate:
    """ASGI middleware: API key first, then the body budget, both before the app reads the body."""

    def __init__(self, app, api_key: str | None, limits: Limits):
        self.app, self.api_key, self.limits = app, api_key, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # the key in the handshake (ComfyUI's /ws); messages in are not read
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if self.api_key and not key_matches(headers.get("authorization", ""), self.api_key):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET").upper()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and method != "OPTIONS" and not is_public(path) and \
                not key_matches(headers.get("authorization", ""), self.api_key):
            return await refuse(send, 401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                "http_error", [(b"www-authenticate", b"Bearer")])
        limit = body_budget(path, self.limits)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await refuse(send, 400, "Content-Length is not a number", "http_error")
            if int(declared) > limit:
                return await refuse(send, 413, BodyTooLarge(limit).detail, "http_error")
        received = 0
        started = False

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside a route (a middleware or a custom reader): answer it here
            if not started:
                await refuse(send, 413, exc.detail, "http_error")


def _size(count: int) -> str:
    return f"{count // 2**20} MiB" if count >= 2**20 else f"{count // 2**10} KiB"
