"""GGUF checkpoints (PyPI `gguf`, llama.cpp's format; seed 002 §8).

A whole SD 1.x/2.x/XL model in one file, in stable-diffusion.cpp's layout: the LDM single-file tensor names
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` / `conditioner.*`). The UNet's weight
matrices are block-quantized (`q8_0`, `q5_1`, `q5_0`, `q4_1`, `q4_0`: 32 values share a scale); convolutions, the
VAE and the text encoders stay float16 and 1-D tensors float32. Our component configs ride in the metadata
(`sfumato.configs`) so a file loads without a network; files without them (stable-diffusion.cpp's own) use the
family's published configs.

Loading keeps quantized matrices quantized in memory (diffusers' `GGUFParameter`): their Linear layers become
diffusers' `GGUFLinear`, which dequantizes the weight at each call (the memory of the quantized file, the compute of
the model's dtype). K-quants (`Q4_K`, `Q6_K`, ...) load; `gguf`'s Python writer cannot make them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfumato.errors import InvalidRequest, UnsupportedModel

QUANTS = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "bf16", "f16", "f32")
UNET_PREFIX = "model.diffusion_model."
MIN_QUANTIZED = 1024  # smaller matrices are not worth a block scale per 32 values


def _type(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


def quantizable(key: str, tensor: torch.Tensor, block: int, prefix: str = UNET_PREFIX) -> bool:
    """A denoiser weight matrix (keys under `prefix`) whose rows split into whole blocks."""
    return (key.startswith(prefix) and key.endswith(".weight") and tensor.dim() == 2
            and tensor.shape[-1] % block == 0 and tensor.numel() >= MIN_QUANTIZED)


def write_gguf(state: dict[str, torch.Tensor], out: Path, quant: str, metadata: dict[str, str],
               prefix: str = UNET_PREFIX) -> dict[str, int]:
    """Write a state dict as GGUF with the denoiser's matrices (keys under `prefix`: the UNet of an LDM-layout
    checkpoint, or every key of a lone denoiser) in `quant`; returns tensors per type."""
    from gguf import GGML_QUANT_SIZES, GGUFWriter
    from gguf.quants import quantize

    if quant not in QUANTS:
        raise InvalidRequest(f"--quant must be one of {', '.join(QUANTS)} (K-quants load but cannot be written)")
    qtype = _type(quant)
    block = GGML_QUANT_SIZES[qtype][0]
    family = metadata.get("sfumato.family", "sd1")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = GGUFWriter(str(tmp), arch=family)
    writer.add_name(out.stem)
    for key, value in {**metadata, "sfumato.quantization": quant}.items():
        writer.add_string(key, value)
    counts: dict[str, int] = {}
    for key, tensor in state.items():
        array = tensor.detach().float().cpu().numpy()
        if quant == "f32" or tensor.dim() <= 1:
            kind, data = "F32", array.astype(np.float32)
        elif quantizable(key, tensor, block, prefix) or (quant in ("f16", "bf16") and tensor.is_floating_point()):
            kind = quant.upper()
            data = array.astype(np.float16) if quant == "f16" else quantize(array, qtype)
        else:
            kind, data = "F16", array.astype(np.float16)
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("F32", "F16"):
            writer.add_tensor(key, np.ascontiguousarray(data))
        else:
            writer.add_tensor(key, data, raw_dtype=_type(kind))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(out)
    return counts


def read_metadata(path: Path) -> tuple[set[str], dict[str, str], str]:
    """Tensor names, string metadata and the UNet's quantization ("q8_0", "f16", or "mixed") without the weights.
    Cached per file version: `describe` runs for every request, and a header holds thousands of tensor entries."""
    stat = Path(path).stat()
    return _read_metadata(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _read_metadata(path: str, _mtime_ns: int, _size: int) -> tuple[set[str], dict[str, str], str]:
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise UnsupportedModel(f"{path} is not a readable GGUF file ({exc})") from None
    strings = {}
    for name, item in reader.fields.items():
        if item.types and item.types[0] == GGUFValueType.STRING:
            strings[name] = bytes(item.parts[item.data[0]]).decode("utf-8", "replace")
    prefix = UNET_PREFIX if any(t.name.startswith(UNET_PREFIX) for t in reader.tensors) else ""
    kinds = {t.tensor_type.name.lower() for t in reader.tensors
             if t.name.startswith(prefix) and len(t.shape) == 2 and t.name.endswith(".weight")}
    quantization = strings.get("sfumato.quantization") or (kinds.pop() if len(kinds) == 1 else "mixed")
    return {t.name for t in reader.tensors}, strings, quantization


def configs_of(strings: dict[str, str]) -> dict[str, Any]:
    from sfumato.models.info import CONFIGS_METADATA_KEY

    return json.loads(strings[CONFIGS_METADATA_KEY]) if CONFIGS_METADATA_KEY in strings else {}


def read_gguf(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor: float16/float32 ones as tensors, quantized ones as diffusers `GGUFParameter`s."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    try:
        return load_gguf_checkpoint(str(path))
    except ValueError as exc:
        raise UnsupportedModel(f"{path}: {str(exc).splitlines()[0]}") from None


def quantized_linears(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> set[str]:
    """Swap the Linear layers whose weights are quantized in `state` for `GGUFLinear` (dequantized per call in
    `dtype`) and give them their quantized weights; returns the state keys it used (loaded as they are: their
    shapes are the packed blocks', not the matrices')."""
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter, _replace_with_gguf_linear

    _replace_with_gguf_linear(model, dtype, state)
    used = set()
    for name, module in model.named_modules():
        key = f"{name}.weight"
        if isinstance(module, GGUFLinear) and isinstance(state.get(key), GGUFParameter):
            module.weight = state[key] if isinstance(state[key], torch.nn.Parameter) else \
                torch.nn.Parameter(state[key], requires_grad=False)
            used.add(key)
    return used


# ---------------------------------------------------------------- a denoiser alone (a diffusers folder's component)

BFL_KEYS = {"double_blocks.": "flux", "joint_blocks.": "sd3"}  # original (non-diffusers) transformer layouts


def component_file(folder: Path) -> Path | None:
    """The `.gguf` weights of a diffusers component folder (`transformer/`, `unet/`), when it has no safetensors."""
    ggufs = sorted(folder.glob("*.gguf"))
    return ggufs[0] if ggufs and not any(folder.glob("*.safetensors")) else None


def _plain_where_read_directly(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """Dequantize the weights of layers whose modules read them directly instead of calling them (HunyuanDiT's
    attention pooling hands `q_proj.weight` to `multi_head_attention_forward`): a packed GGUF matrix would not fit."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    prefixes = tuple(f"{name}." for name, module in model.named_modules() if "AttentionPool" in type(module).__name__)
    if not prefixes:
        return state
    return {k: dequantize_gguf_tensor(v).to(dtype) if k.startswith(prefixes) and isinstance(v, GGUFParameter) else v
            for k, v in state.items()}


def load_component(cls, folder: Path, dtype: torch.dtype):
    """A diffusers denoiser from its folder's config and a GGUF file: diffusers keys, or the original FLUX/SD3
    layout (city96's files; `models.flowfile` maps the keys, splitting fused q/k/v rows of packed blocks as they are).
    Quantized matrices stay packed."""
    from accelerate import init_empty_weights

    path = component_file(folder)
    state = read_gguf(path)
    state = {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}
    layout = next((name for key, name in BFL_KEYS.items() if any(k.startswith(key) for k in state)), None)
    if layout == "flux" and any(k.startswith("distilled_guidance_layer.") for k in state):  # Chroma's BFL layout
        layout = "chroma"
    if "cap_embedder.1.weight" in state and any(".attention.qkv." in k for k in state):  # Z-Image's original
        from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

        state = convert_z_image_transformer_checkpoint_to_diffusers(state)
    if layout is not None:  # our rule table (models.flowfile): any width; packed rows split like plain ones
        from sfumato.models.flowfile import to_diffusers

        state = to_diffusers(state, layout, path)
    with init_empty_weights():
        model = cls.from_config(cls.load_config(str(folder)))
    state = _plain_where_read_directly(model, state, dtype)
    used = quantized_linears(model, state, dtype)
    rest = {k: v.to(dtype) if v.is_floating_point() and v.dtype != torch.float16 else v
            for k, v in state.items() if k not in used}
    expected = {k for k, v in model.state_dict().items() if v.is_meta}
    missing, unexpected = expected - set(rest), set(rest) - set(model.state_dict())
    if missing or unexpected:
        raise UnsupportedModel(f"{path} does not fit {folder.name}/config.json ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected weights, e.g. {sorted(missing or unexpected)[0]})")
    model.load_state_dict(rest, strict=False, assign=True)
    if dtype != torch.float16:  # the file's float16 matrices stay float16 in memory, computed in `dtype`
        from sfumato.memory.quantize import quantize_weights

        for module in model.modules():  # other float16 tensors (norms, pad tokens, embeddings): in `dtype`
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            for name, param in list(module.named_parameters(recurse=False)):
                if param.dtype == torch.float16:
                    setattr(module, name, torch.nn.Parameter(param.to(dtype), requires_grad=False))

        quantize_weights(model, "f16", everything=True, compute_dtype=dtype)
    return model.eval()


def write_component(model: torch.nn.Module, folder: Path, quant: str, family: str) -> Path:
    """Replace a saved component's safetensors weights by one GGUF file (diffusers keys, `quant` matrices)."""
    out = folder / "diffusion_pytorch_model.gguf"
    write_gguf(model.state_dict(), out, quant, {"sfumato.family": family, "sfumato.layout": "diffusers"}, prefix="")
    for old in folder.glob("*.safetensors*"):
        old.unlink()
    return out
