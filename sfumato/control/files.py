"""Control model files: where they live, how a name resolves, which classes there are — without importing torch
(`sfumato models` lists them; the loader is `control.models`)."""

from __future__ import annotations

from pathlib import Path

from sfumato.errors import ModelNotFound
from sfumato.models import home

EMBEDDED_CONTROLNETS = Path(__file__).resolve().parent.parent / "models" / "embedded"
CLASSES = {"ControlNetModel": "controlnet", "ControlNetUnionModel": "controlnet-union", "T2IAdapter": "t2i-adapter",
           "SD3ControlNetModel": "controlnet-sd3", "FluxControlNetModel": "controlnet-flux",  # these: pipelines/flow
           "QwenImageControlNetModel": "controlnet-qwen-image", "ZImageControlNetModel": "controlnet-z-image"}
FLOW_KINDS = {"controlnet-sd3": "sd3", "controlnet-flux": "flux", "controlnet-qwen-image": "qwen-image",
              "controlnet-z-image": "z-image"}
CROSS_ATTENTION_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def controlnet_dir() -> Path:
    return home.home() / "models" / "controlnet"


def embedded_controlnet(base_name: str | None) -> Path | None:
    """The control model shipped for an embedded base model (`sfumato-emoji` -> `sfumato-emoji-canny`)."""
    if not base_name:
        return None
    path = EMBEDDED_CONTROLNETS / f"{base_name}-canny"
    return path if (path / "config.json").exists() else None


def resolve(name: str) -> Path:
    """A path, a name in $SFUMATO_HOME/models/controlnet (file stem or folder), or a shipped control model."""
    path = Path(name).expanduser()
    if path.exists():
        home.refuse_pickle(path)
        return path
    folder = controlnet_dir()
    for candidate in [folder / name, *(folder / f"{name}{s}" for s in home.SAFE_SUFFIXES + home.PICKLE_SUFFIXES),
                      EMBEDDED_CONTROLNETS / name]:
        if candidate.exists() and (candidate.is_file() or (candidate / "config.json").exists()):
            home.refuse_pickle(candidate)
            return candidate
    raise ModelNotFound(f"control model {name!r} not found (not a path, and not in {folder})")


def list_control_models() -> list[Path]:
    folder = controlnet_dir()
    found = []
    if folder.is_dir():
        found += [p for p in sorted(folder.iterdir())
                  if (p.is_dir() and (p / "config.json").exists()) or p.suffix.lower() in home.SAFE_SUFFIXES]
    found += [p for p in sorted(EMBEDDED_CONTROLNETS.glob("*-canny")) if (p / "config.json").exists()]
    return found
