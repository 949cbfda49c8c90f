"""Write a pipeline as a diffusers folder (with sfumato's settings file beside it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def save_model_folder(pipe, folder: Path, settings: dict[str, Any] | None = None) -> Path:
    """Write a diffusers folder; a text encoder referenced in `settings` is referenced, not copied."""
    import diffusers

    folder.mkdir(parents=True, exist_ok=True)
    referenced = bool(settings and settings.get("text_encoder"))
    index: dict[str, Any] = {"_class_name": type(pipe).__name__, "_diffusers_version": diffusers.__version__}
    for name, component in pipe.components.items():
        if component is None or not hasattr(component, "save_pretrained"):
            if name in ("safety_checker", "feature_extractor", "image_encoder"):
                index[name] = [None, None]
            continue
        cls = type(component)
        if cls.__module__.startswith("sfumato."):  # our own subclass (models.textdit): diffusers knows its base
            cls = cls.__mro__[1]
        library = "transformers" if cls.__module__.startswith("transformers") else "diffusers"
        index[name] = [library, cls.__name__]
        if referenced and name in ("text_encoder", "tokenizer"):
            continue
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        if name.startswith(("tokenizer", "scheduler")):
            component.save_pretrained(str(target))
        else:
            component.save_pretrained(str(target), safe_serialization=True)
    for key in ("requires_safety_checker", "force_zeros_for_empty_prompt", "requires_aesthetics_score"):
        if key in pipe.config:
            index[key] = pipe.config[key]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if settings:
        (folder / "sfumato.json").write_text(json.dumps(settings, indent=2))
    return folder
