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


def quantizable(key: str, tensor: torch.Tensor, block: int) -> bool:
    """A UNet weight matrix whose rows split into whole blocks."""
    return (key.startswith(UNET_PREFIX) and key.endswith(".weight") and tensor.dim() == 2
            and tensor.shape[-1] % block == 0 and tensor.numel() >= MIN_QUANTIZED)


def write_gguf(state: dict[str, torch.Tensor], out: Path, quant: str, metadata: dict[str, str]) -> dict[str, int]:
    """Write an LDM-layout state dict as GGUF with the UNet's matrices in `quant`; returns tensors per type."""
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
        elif quantizable(key, tensor, block) or (quant in ("f16", "bf16") and tensor.is_floating_point()):
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
    """Tensor names, string metadata and the UNet's quantization ("q8_0", "f16", or "mixed") without the weights."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as exc:
        raise UnsupportedModel(f"{path} is not a readable GGUF file ({exc})") from None
    strings = {}
    for name, item in reader.fields.items():
        if item.types and item.types[0] == GGUFValueType.STRING:
            strings[name] = bytes(item.parts[item.data[0]]).decode("utf-8", "replace")
    kinds = {t.tensor_type.name.lower() for t in reader.tensors
             if t.name.startswith(UNET_PREFIX) and len(t.shape) == 2 and t.name.endswith(".weight")}
    quantization = strings.get("sfumato.quantization") or (kinds.pop() if len(kinds) == 1 else "mixed")
    return {t.name for t in reader.tensors}, strings, quantization


def configs_of(strings: dict[str, str]) -> dict[str, Any]:
    from sfumato.models.detect import CONFIGS_METADATA_KEY

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
