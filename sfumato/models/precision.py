"""Which precision a model loads in: `--dtype auto` (the default) picks the fastest one that keeps the image.

- CUDA: float16 (as before).
- CPU: bfloat16 when the processor has bfloat16 matrix units or instructions (Intel AMX `amx_bf16`, AVX-512
  `avx512_bf16`) and the denoiser is large enough to gain (`BF16_MIN_PARAMETERS`, measured by
  `benchmarks/cpu_dtype.py`: small models lose to the casts around every layer); float32 elsewhere.
- An explicit `float32` / `float16` / `bfloat16` is always honoured (bit-exact parity work pins `float32`).

`SFUMATO_CPU_BF16=0|1` overrides the processor check (tests; a machine whose flags lie).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from sfumato.models.info import ModelInfo

# bf16 / fp32 step time on this project's CPU (benchmarks/cpu_dtype.json): 9M 0.94x, 12M 0.95x, 36M 1.28x,
# 142M 2.16x, 860M (SD 1.5) 3.14x -- the denoiser's parameter count from which bf16 is the default on CPU:
BF16_MIN_PARAMETERS = 30_000_000
DTYPES = ("auto", "float32", "float16", "bfloat16")


@lru_cache(maxsize=1)
def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_bf16() -> bool:
    """True when this CPU runs bfloat16 matrix work natively (AMX or AVX512-BF16)."""
    override = os.environ.get("SFUMATO_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    flags = _cpu_flags()
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _count(files: list[Path], prefix: str = "") -> int:
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    shape = f.get_slice(key).get_shape()
                    n = 1
                    for d in shape:
                        n *= d
                    total += n
    return total


def denoiser_parameters(info: ModelInfo) -> int:
    """The UNet's (or transformer's) parameter count, read from the safetensors headers (no weights loaded); 0 when
    unknown (GGUF, pickle)."""
    path = info.path
    try:
        if path.is_dir():
            for part in ("unet", "transformer"):
                files = sorted((path / part).glob("*.safetensors"))
                if files:
                    return _count(files)
            return 0
        if path.suffix == ".safetensors":
            inside = _count([path], "model.diffusion_model.")
            return inside or _count([path])
    except (OSError, ValueError, RuntimeError):
        return 0
    return 0


def pick_dtype(device: torch.device, dtype: str | None = None, info: ModelInfo | None = None) -> torch.dtype:
    """The precision to load `info` in on `device` (`dtype` None or "auto": the rule above)."""
    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and info is not None and cpu_bf16() and denoiser_parameters(info) >= BF16_MIN_PARAMETERS:
        return torch.bfloat16
    return torch.float32
