"""Where bfloat16 pays on this CPU: float32 vs bfloat16 denoiser steps for UNets from tiny to SD 1.5 size.

    python benchmarks/cpu_dtype.py [--sizes emoji,scenes,mid,sd15] [--repeats 3] [--json benchmarks/cpu_dtype.json]

Each UNet (random weights, diffusers UNet2DConditionModel) runs one classifier-free-guidance step (batch 2) at its
native latent size, float32 and then with its weights in bfloat16, side by side in this process; the ratio is
float32 time / bfloat16 time (> 1: bfloat16 is faster), the error the relative RMS difference of the outputs.
`sfumato.models.precision.BF16_MIN_PARAMETERS` is set from where the ratio crosses 1 (with a margin).
A run that saw an error prints it and exits 1 instead of a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

SIZES = {  # name: (block_out_channels, layers_per_block, latent side, cross-attention dim, attention head dim)
    "emoji": ([64, 128, 160], 1, 8, 384, 32),
    "scenes": ([64, 128, 192], 1, 8, 384, 32),
    "small": ([96, 192, 288, 288], 1, 16, 768, 8),
    "mid": ([160, 320, 480, 480], 2, 32, 768, 8),
    "sd15": ([320, 640, 1280, 1280], 2, 64, 768, 8),
}


def build(name: str):
    from diffusers import UNet2DConditionModel

    channels, layers, side, cross, heads = SIZES[name]
    deep = len(channels) == 4
    down = (["CrossAttnDownBlock2D"] * (len(channels) - 1) + ["DownBlock2D"]) if deep else \
        ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(channels) - 1)
    up = (["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(channels) - 1)) if deep else \
        ["CrossAttnUpBlock2D"] * (len(channels) - 1) + ["UpBlock2D"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=side, block_out_channels=channels, layers_per_block=layers,
                                down_block_types=down, up_block_types=up, cross_attention_dim=cross,
                                attention_head_dim=heads).eval()
    inputs = (torch.randn(2, 4, side, side), torch.tensor([500, 500]), torch.randn(2, 77, cross))
    return unet, inputs


def timed(unet, inputs, dtype: torch.dtype, repeats: int) -> tuple[float, torch.Tensor]:
    sample, t, context = inputs
    args = (sample.to(dtype), t, context.to(dtype))
    with torch.no_grad():
        out = unet(*args).sample  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            out = unet(*args).sample
    return (time.perf_counter() - started) / repeats, out.float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="emoji,scenes,small,mid,sd15")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    try:
        for name in args.sizes.split(","):
            unet, inputs = build(name)
            params = sum(p.numel() for p in unet.parameters())
            t32, out32 = timed(unet, inputs, torch.float32, args.repeats)
            unet.to(torch.bfloat16)
            t16, out16 = timed(unet, inputs, torch.bfloat16, args.repeats)
            error = float((out16 - out32).pow(2).mean().sqrt() / out32.pow(2).mean().sqrt())
            rows.append({"unet": name, "parameters_m": round(params / 1e6, 1), "float32_s": round(t32, 4),
                         "bfloat16_s": round(t16, 4), "ratio": round(t32 / t16, 2), "relative_rms_error": round(error, 4)})
            print(f"{name:7s} {params / 1e6:7.1f}M  float32 {t32:8.4f} s  bfloat16 {t16:8.4f} s  "
                  f"ratio {t32 / t16:5.2f}x  error {error:.4f}", flush=True)
            del unet
    except Exception as exc:  # a benchmark that saw errors fails instead of printing a ratio
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
