"""`sfumato convert`: pickle -> safetensors (explicitly, weights only), single file <-> diffusers folder, GGUF."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from sfumato.errors import InvalidRequest, ModelNotFound, UnsupportedModel
from sfumato.models.detect import describe
from sfumato.models.home import PICKLE_SUFFIXES
from sfumato.models.loader import components_of, load_model
from sfumato.models.singlefile import ldm_checkpoint, write_single_file


def convert(source: Path, target: Path, allow_pickle: bool = False, half: bool = False,
            quant: str | None = None, add: list[Path] | None = None) -> Path:
    """Convert `source` to `target`; the target's form (`.safetensors`, `.gguf` or folder) picks the direction.
    `quant` (GGUF only, default q8_0): the UNet matrices' type (`models.gguf.QUANTS`). `add`: separate VAE / CLIP /
    T5 files joined with a transformer-only SD3/FLUX `source` into one `.safetensors` (`flowfile.assemble`)."""
    for path in (source, *(add or [])):
        if not path.exists():
            raise ModelNotFound(f"{path} does not exist")
    if add:
        from sfumato.models.flowfile import assemble

        if target.suffix.lower() != ".safetensors" or quant or half or not source.is_file():
            raise InvalidRequest("--add joins a transformer-only file into one .safetensors file (no --quant or --half)")
        assemble(source, add, target)
        return target
    if target.exists() and target.resolve() == source.resolve():
        raise InvalidRequest("source and target are the same path")
    if quant is not None and target.suffix and target.suffix.lower() != ".gguf":
        raise InvalidRequest("--quant is for .gguf targets, or a folder whose denoiser becomes GGUF")
    if target.suffix.lower() == ".gguf":
        return _to_gguf(source, target, quant or "q8_0")
    if quant is not None:
        return _to_gguf_folder(source, target, quant)
    to_file = target.suffix.lower() == ".safetensors"
    if not to_file and target.suffix:
        raise InvalidRequest(f"target {target} must end in .safetensors or .gguf, or be a folder (no suffix)")
    if source.is_file() and source.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InvalidRequest(
                f"{source} is a pickle; converting it runs torch.load(weights_only=True): add --allow-pickle to agree"
            )
        if to_file:
            return _pickle_to_safetensors(source, target, half)
        with tempfile.TemporaryDirectory() as tmp:
            single = _pickle_to_safetensors(source, Path(tmp) / "model.safetensors", half)
            return _to_folder(single, target, half)
    if to_file:
        info = describe(source)
        if info.format != "diffusers":
            raise InvalidRequest(f"{source} is already a single file")
        model = load_model(source, device="cpu", dtype="float32")
        write_single_file(components_of(model), model.info, target, half=half)
        return target
    return _to_folder(source, target, half)


def _to_gguf(source: Path, target: Path, quant: str) -> Path:
    from sfumato.models.gguf import QUANTS, write_gguf

    if quant not in QUANTS:
        raise InvalidRequest(f"--quant must be one of {', '.join(QUANTS)} (K-quants load but cannot be written)")
    info = describe(source)
    if info.format == "pickle":
        raise InvalidRequest(f"{source} is a pickle: convert it to .safetensors first (--allow-pickle)")
    if info.family.denoiser != "unet":
        raise UnsupportedModel(f"GGUF conversion writes SD 1.x/2.x/XL checkpoints, not {info.family.name}")
    model = load_model(source, device="cpu", dtype="float32")
    state, metadata = ldm_checkpoint(components_of(model), model.info)
    write_gguf(state, target, quant, metadata)
    return target


def _to_gguf_folder(source: Path, target: Path, quant: str) -> Path:
    """A diffusers folder whose UNet/transformer weights are one GGUF file (FLUX and SD3 too)."""
    from sfumato.models.gguf import QUANTS, write_component

    if quant not in QUANTS:
        raise InvalidRequest(f"--quant must be one of {', '.join(QUANTS)} (K-quants load but cannot be written)")
    model = load_model(source, device="cpu", dtype="float32")
    model.pipe.save_pretrained(str(target), safe_serialization=True)
    component = "transformer" if getattr(model.pipe, "transformer", None) is not None else "unet"
    write_component(getattr(model.pipe, component), target / component, quant, model.info.family.name)
    return target


def _to_folder(source: Path, target: Path, half: bool) -> Path:
    model = load_model(source, device="cpu", dtype="float16" if half else "float32")
    model.pipe.save_pretrained(str(target), safe_serialization=True)
    return target


def _pickle_to_safetensors(source: Path, target: Path, half: bool) -> Path:
    try:
        data = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only rejects anything but tensors and plain containers
        raise UnsupportedModel(f"{source}: not a weights-only checkpoint ({str(exc).splitlines()[0]})") from None
    while isinstance(data, dict):  # unwrap {"state_dict": ...} and Real-ESRGAN's {"params_ema"/"params": ...}
        inner = next((data[k] for k in ("state_dict", "params_ema", "params") if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, dict):
        raise UnsupportedModel(f"{source}: expected a state dict, found {type(data).__name__}")
    tensors = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            value = value.half() if half and value.is_floating_point() else value
            tensors[key] = value.contiguous().clone()  # break shared storage, which safetensors refuses
    if not tensors:
        raise UnsupportedModel(f"{source}: no tensors found")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "sfumato.converted_from": source.name})
    tmp.replace(target)
    return target
