"""Compiled sampling: `torch.compile` on the denoiser (UNet or transformer) and the VAE decoder, in place.

- **Modes.** `default` (inductor: fused kernels; on CPU C++/OpenMP code), `reduce-overhead` (CUDA: the compiled
  step is captured as a CUDA graph and replayed; inputs are copied into its static buffers), `max-autotune`
  (CUDA, autotunes matmuls; minutes). On CPU, `reduce-overhead` behaves like `default`.
- **CUDA graphs replay into the same memory**, and torch frees a call's tensors at the next call. So with
  `reduce-overhead` the denoiser's outputs are cloned right after each call (schedulers keep earlier predictions),
  the step caches copy the features they keep (`wrapping.after_each_call`), and the VAE decoder is compiled in
  `default` mode: tiled and sliced decodes keep each call's output until all are stitched, and one decode per
  image gains nothing from a graph.
- **Layout.** UNets and the VAE go channels-last (convolutions run in NHWC), as diffusers' speed guide does.
- **Shapes.** Compiled for static shapes: a new size, batch or CFG row count compiles once more; after
  `RECOMPILE_LIMIT` variants of one function dynamo runs that function eagerly (same images, eager speed).
- **LoRA / ControlNet / step caching.** Modules are compiled in place (`nn.Module.compile`), so LoRA adapters,
  ControlNet residual arguments and the step cache's wrappers are traced like any other code: a changed LoRA set or
  weight, or a cached vs full step, is one more compiled variant (bounded as above), never a wrong image.
- **Cache.** Inductor's FX-graph and autotuning caches live under `$SFUMATO_HOME/cache/compile`, so a second
  process with the same model and shapes loads the compiled kernels instead of compiling them again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch._dynamo

from sfumato.errors import InvalidRequest
from sfumato.models.home import home
from sfumato.speed.wrapping import calls_reuse_outputs

MODES = ("default", "reduce-overhead", "max-autotune")
RECOMPILE_LIMIT = 16


def cache_dir() -> Path:
    return home() / "cache" / "compile"


def use_disk_cache() -> Path:
    """Point inductor's on-disk caches at the models home (set before the first compile of the process)."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    return folder


def compile_pipeline(pipe, mode: str = "default") -> list[str]:
    """Compile the pipeline's denoiser and VAE decoder in place; returns what was compiled."""
    if mode not in MODES:
        raise InvalidRequest(f"compile mode must be one of {', '.join(MODES)}, got {mode!r}")
    if getattr(pipe, "_sfumato_compiled", None):
        return pipe._sfumato_compiled
    use_disk_cache()
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    compiled = []
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is not None:
        if getattr(pipe, "unet", None) is not None:
            denoiser.to(memory_format=torch.channels_last)
        denoiser.compile(mode=mode, dynamic=False)
        if mode == "reduce-overhead":
            calls_reuse_outputs(denoiser)
        compiled.append(type(denoiser).__name__)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "decoder"):
        vae.to(memory_format=torch.channels_last)
        vae.decoder.compile(mode="default" if mode == "reduce-overhead" else mode, dynamic=False)
        compiled.append("VAE decoder")
    pipe._sfumato_compiled = compiled
    return compiled

