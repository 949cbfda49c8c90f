"""The one JSON error shape of every HTTP answer (routes, exception handlers and the browser guard)."""

from __future__ import annotations

import json
from typing import Any


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    """One JSON error shape every client understands: OpenAI's `error` object and FastAPI's `detail`."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}, "detail": message}


async def refuse(send, status: int, message: str, kind: str = "forbidden", headers: list | None = None) -> None:
    """Answer with the one JSON error shape, without reading the request body."""
    body = json.dumps(error_body(message, kind, status)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
