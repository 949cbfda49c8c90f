"""The one JSON error shape of every HTTP answer (routes, exception handlers and the browser guard)."""

from __future__ import annotations

from typing import Any


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    """One JSON error shape every client understands: OpenAI's `error` object and FastAPI's `detail`."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}, "detail": message}
