"""ComfyUI's PNG metadata: the API-format graph in a `prompt` text chunk and, when the client sent one, the UI
workflow in `workflow` (`extra_data.extra_pnginfo`) — beside sfumato's own `parameters` infotext and record, so
ComfyUI, A1111 readers and `sfumato replay` all find what they look for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from sfumato.output import SFUMATO_KEY


def save_output(path: Path, image: Image.Image, images, index: int, record: dict[str, Any]) -> Path:
    """Write one output image of a graph run (`images`: the `comfy.executor.Images` it belongs to)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(record["prompt"]))
    extra = (record.get("extra_data") or {}).get("extra_pnginfo") or {}
    for key, value in extra.items():  # ComfyUI writes each extra_pnginfo entry (the UI's `workflow`) as a chunk
        if isinstance(key, str) and key not in ("prompt", "parameters", SFUMATO_KEY):
            info.add_text(key, json.dumps(value))
    if index < len(images.infotexts) and images.infotexts[index]:
        info.add_text("parameters", images.infotexts[index])
    if index < len(images.records):
        info.add_text(SFUMATO_KEY, json.dumps({**images.records[index], "comfy": True}, sort_keys=True))
    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def comfy_prompt(path: Path) -> dict[str, Any] | None:
    """The API-format graph a ComfyUI PNG carries (None when it has none)."""
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except OSError:
        return None
    try:
        prompt = json.loads(text["prompt"]) if "prompt" in text else None
    except ValueError:
        return None
    return prompt if isinstance(prompt, dict) else None
