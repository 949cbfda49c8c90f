"""What a ComfyUI workflow's names mean here: checkpoints, LoRAs, VAEs, ControlNets, upscale models, diffusion
models and text encoders (`models/diffusion_models` or `unet`, `models/text_encoders` or `clip`, as ComfyUI keeps
them) from the models home (plus the embedded model and a server's own), input images from one folder. Names, never paths, unless
`allow_paths` (the CLI). A name matches with or without its file extension, as workflows carry ComfyUI file names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sfumato.errors import InvalidRequest, ModelNotFound

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".sft")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _weights(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in WEIGHT_SUFFIXES or (path.is_dir() and any(path.iterdir())):
            out[path.name] = str(path)
    return out


@dataclass
class Names:
    checkpoints: dict[str, str] = field(default_factory=dict)  # listed name -> path
    loras: dict[str, str] = field(default_factory=dict)
    vae: dict[str, str] = field(default_factory=dict)
    controlnet: dict[str, str] = field(default_factory=dict)
    upscale_models: dict[str, str] = field(default_factory=dict)  # listed name -> upscaler name
    diffusion_models: dict[str, str] = field(default_factory=dict)  # transformer/UNet-only files (UNETLoader)
    text_encoders: dict[str, str] = field(default_factory=dict)  # CLIP-L/G, T5 files (CLIPLoader, DualCLIPLoader)
    input_dir: Path | None = None
    allow_paths: bool = False

    @classmethod
    def from_home(cls, input_dir: Path | None = None, allow_paths: bool = False,
                  extra_checkpoints: dict[str, str] | None = None) -> "Names":
        from sfumato.control.files import list_control_models
        from sfumato.models.embedded import embedded_models
        from sfumato.models.home import checkpoints_dir, list_vaes, loras_dir
        from sfumato.upscale.upscalers import list_upscalers

        checkpoints = _weights(checkpoints_dir())
        for name, path in embedded_models().items():
            checkpoints.setdefault(name, str(path))
        checkpoints.update(extra_checkpoints or {})
        models = checkpoints_dir().parent
        return cls(checkpoints=checkpoints, loras=_weights(loras_dir()), vae={p.name: str(p) for p in list_vaes()},
                   controlnet={p.name: str(p) for p in list_control_models()},
                   upscale_models={u.name: u.name for u in list_upscalers() if u.kind != "resample"},
                   diffusion_models={**_weights(models / "unet"), **_weights(models / "diffusion_models")},
                   text_encoders={**_weights(models / "clip"), **_weights(models / "text_encoders")},
                   input_dir=input_dir, allow_paths=allow_paths)

    def lists(self) -> dict[str, list[str]]:
        """The choices `/object_info` shows and `graph.validate` accepts."""
        inputs = []
        if self.input_dir is not None and self.input_dir.is_dir():
            inputs = sorted(str(p.relative_to(self.input_dir)) for p in [*self.input_dir.glob("*"),
                                                                          *self.input_dir.glob("*/*")]
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return {"checkpoints": list(self.checkpoints), "loras": list(self.loras), "vae": list(self.vae),
                "controlnet": list(self.controlnet), "upscale_models": list(self.upscale_models),
                "diffusion_models": list(self.diffusion_models), "text_encoders": list(self.text_encoders),
                "input": inputs}

    def find(self, kind: str, name: str) -> str:
        table: dict[str, str] = getattr(self, kind)
        if name in table:
            return table[name]
        stems = {Path(key).stem: value for key, value in table.items()}
        if Path(name).stem in stems and "/" not in name and "\\" not in name:
            return stems[Path(name).stem]
        if self.allow_paths and kind != "upscale_models" and Path(name).exists():
            return str(Path(name))
        raise ModelNotFound(f"{kind.replace('_', ' ')} {name!r} not found")

    def input_image(self, name: str) -> Path:
        """An input image by name, or `subfolder/name` (`/upload/image` puts them there); a path only for the CLI."""
        parts = name.replace("\\", "/").split("/")
        if self.input_dir is not None and len(parts) <= 2 and all(p not in ("", ".", "..") for p in parts):
            path = self.input_dir.joinpath(*parts)
            if path.is_file():
                return path
        if self.allow_paths and Path(name).is_file():
            return Path(name)
        raise InvalidRequest(f"input image {name!r} not found (upload it first: POST /upload/image)")
