"""`sfumato models`: what is in the models home, with family, format, size and hash."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sfumato.errors import SfumatoError
from sfumato.models.detect import describe
from sfumato.models.home import PICKLE_SUFFIXES, SAFE_SUFFIXES, checkpoints_dir, loras_dir, sha256, weight_files


@dataclass
class CatalogEntry:
    kind: str  # checkpoint, lora, controlnet or vae
    name: str
    path: str
    family: str
    format: str
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def _split_folder(path: Path) -> bool:
    """A folder of a model's separate files (models.splitfile: Z-Image, Chroma, Qwen-Image)."""
    from sfumato.models.splitfile import describe_split

    return describe_split(path) is not None


def _entries(folder: Path, kind: str) -> list[CatalogEntry]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        is_model_dir = path.is_dir() and ((path / "model_index.json").exists() or
                                          (kind == "checkpoint" and _split_folder(path)))
        if not is_model_dir and path.suffix.lower() not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            continue
        size = sum(p.stat().st_size for p in weight_files(path))
        if path.suffix.lower() in PICKLE_SUFFIXES:
            family, fmt = "?", "pickle (convert before use)"
        elif kind == "lora":
            from sfumato.models.lycoris import network_type

            try:
                family, fmt = network_type(path), "safetensors"
            except Exception as exc:  # a broken header: listed, not loadable
                family, fmt = "?", f"unreadable: {exc}"
        else:
            try:
                info = describe(path)
                family, fmt = info.family.name + (" inpaint" if info.inpainting else ""), info.format
                if info.quantization:
                    fmt += f" {info.quantization}"
            except SfumatoError as exc:
                family, fmt = "?", f"unsupported: {exc}"
        found.append(CatalogEntry(kind, path.stem if path.is_file() else path.name, str(path), family, fmt, size,
                                  sha256(path)))
    return found


def _control_entries() -> list[CatalogEntry]:
    from sfumato.control.files import CLASSES, list_control_models

    found = []
    for path in list_control_models():
        try:
            if path.is_dir():
                config = json.loads((path / "config.json").read_text())
                fmt = "diffusers"
            else:
                from sfumato.control.models import read_single_file  # a single file's config comes from its tensors

                _, config = read_single_file(path)
                fmt = "safetensors"
            family = CLASSES.get(config.get("_class_name"), "?")
        except (SfumatoError, OSError, ValueError) as exc:
            family, fmt = "?", f"unsupported: {exc}"
        size = sum(p.stat().st_size for p in weight_files(path))
        found.append(CatalogEntry("controlnet", path.stem if path.is_file() else path.name, str(path), family, fmt,
                                  size, sha256(path)))
    return found


def _vae_entries() -> list[CatalogEntry]:
    from sfumato.models.home import list_vaes

    return [CatalogEntry("vae", path.stem if path.is_file() else path.name, str(path), "vae",
                         "safetensors" if path.is_file() else "diffusers",
                         sum(p.stat().st_size for p in weight_files(path)), sha256(path)) for path in list_vaes()]


def list_models() -> list[CatalogEntry]:
    return (_entries(checkpoints_dir(), "checkpoint") + _entries(loras_dir(), "lora") + _control_entries()
            + _vae_entries())
