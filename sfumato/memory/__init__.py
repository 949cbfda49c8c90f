"""Memory: low-memory modes every anchor has (VAE tiling and slicing, attention slicing, model and sequential CPU
offload), A1111's `--medvram` / `--lowvram` presets over them, and 8-bit weights (`memory.quantize`). GGUF
checkpoints live in `models.gguf`.

A `MemorySettings` belongs to an engine (like `compile`): it is applied once when a model loads, and the images stay
the same up to float rounding (tiling blends overlapping tiles; offload only moves weights between devices)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from sfumato.errors import InvalidRequest

OFFLOADS = ("model", "sequential")


@dataclass(frozen=True)
class MemorySettings:
    vae_tiling: bool = False  # decode/encode large images in overlapping tiles (memory follows the tile)
    vae_slicing: bool = False  # decode a batch one image at a time
    attention_slicing: bool = False  # attention in slices (lower peak, a little slower)
    offload: str | None = None  # CUDA: "model" (one component on the GPU at a time) or "sequential" (one layer)
    quantize: str | None = None  # "int8" or "fp8": 8-bit denoiser weights (memory.quantize)

    def check(self) -> MemorySettings:
        if self.offload not in (None, *OFFLOADS):
            raise InvalidRequest(f"offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        if self.quantize not in (None, "int8", "fp8"):
            raise InvalidRequest(f"quantize must be int8 or fp8, got {self.quantize!r}")
        return self

    @property
    def active(self) -> bool:
        return self != MemorySettings()


PRESETS = {
    # A1111/Forge: --medvram keeps one model part on the GPU at a time; --lowvram goes layer by layer
    "medvram": MemorySettings(vae_tiling=True, vae_slicing=True, offload="model"),
    "lowvram": MemorySettings(vae_tiling=True, vae_slicing=True, attention_slicing=True, offload="sequential"),
}


def memory_settings(preset: str | None = None, **overrides) -> MemorySettings:
    """A preset (`medvram`, `lowvram`) with explicit settings on top (None leaves the preset's value)."""
    if preset is not None and preset not in PRESETS:
        raise InvalidRequest(f"memory preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = PRESETS.get(preset, MemorySettings())
    changes = {k: v for k, v in overrides.items() if v not in (None, False)}
    return dataclasses.replace(base, **changes).check()


def release_freed_memory() -> None:
    """Collect garbage and, on glibc, hand freed heap pages back to the system (RSS drops, not only in theory)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def apply_memory(pipe, settings: MemorySettings, device: torch.device) -> list[str]:
    """Apply the settings to a loaded pipeline (before it runs); returns what was switched on. Offload needs CUDA:
    on a CPU the weights already live in main memory, so it is skipped (and said so)."""
    done = []
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if settings.quantize and denoiser is not None:
        from sfumato.memory.quantize import quantize_weights

        quantize_weights(denoiser, settings.quantize)
        release_freed_memory()  # the full-precision weights just replaced go back to the system
        done.append(f"{settings.quantize} weights")
    vae = getattr(pipe, "vae", None)
    if settings.vae_tiling and vae is not None and hasattr(vae, "enable_tiling"):
        from sfumato.memory.tiled_vae import configure

        if "block_out_channels" in vae.config:  # an AutoencoderKL: our tile sizes (and tiled_vae's shared norms)
            configure(vae, 2 ** (len(vae.config.block_out_channels) - 1))
        else:  # Qwen's and Wan's 3D VAEs, SANA's DC-AE, LTX's: their own tiling
            vae.enable_tiling()
        done.append("VAE tiling")
    if settings.vae_slicing and vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
        done.append("VAE slicing")
    if settings.attention_slicing and getattr(pipe, "unet", None) is not None:
        pipe.enable_attention_slicing("auto")
        done.append("attention slicing")
    if settings.offload and device.type == "cuda":
        if settings.offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        done.append(f"{settings.offload} offload")
    elif settings.offload:
        done.append(f"{settings.offload} offload skipped (no GPU)")
    return done


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: its weights' device, or under offload hooks (accelerate's, as diffusers' offload
    installs them) the hook's execution device — sequentially offloaded weights sit on the meta device between
    calls, so tensors made "on the module's device" must use this."""
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    return module.device if hasattr(module, "device") else next(module.parameters()).device
