"""Upscaler speed on this machine: output megapixels per second for every built-in upscaler, ncnn and torch
backends side by side (and CUDA when present), whole image and tiled.

    python benchmarks/upscale_speed.py [--size 192] [--tile 96] [--repeats 2] [--json out.json]

Each row upscales a `size`x`size` picture 4x (or to 4x with a resampler). `tiled` runs tiles of at most `--tile`
input pixels (spread evenly) with 16 px of overlap and 24 px of context, as large images run with the default
192-pixel tiles: the cost of tiling shows as the tiled/whole ratio. `ratio` is the row's speed over the torch CPU
row of the same upscaler and tiling (> 1: faster). Any error fails the run instead of printing a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfumato.upscale import BUILTIN, find, load, upscale  # noqa: E402


def picture(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(5 * y) * 0.5 + 0.5, x * y], -1)
    return Image.fromarray(((base + rng.normal(0, 0.04, base.shape)).clip(0, 1) * 255).astype(np.uint8))


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, ncnn/torch kernels)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--tile", type=int, default=96, help="tile size of the tiled rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    image = picture(args.size)
    out_mp = (args.size * 4) ** 2 / 1e6
    devices = [("cpu", "ncnn"), ("cpu", "torch")] + ([("cuda", "torch")] if torch.cuda.is_available() else [])
    rows, errors = [], []
    for name in ["Lanczos", *BUILTIN]:
        for device, backend in devices if name in BUILTIN else [("cpu", "resample")]:
            try:
                upscaler = load(find(name), device, "auto" if backend == "resample" else backend)
                for tiled, tile in (("whole", 0), ("tiled", args.tile)):
                    spent = seconds(lambda: upscale(image, upscaler, args.size * 4, args.size * 4, tile=tile,
                                                    overlap=16), args.repeats)
                    rows.append({"upscaler": name, "device": device, "backend": backend, "tiling": tiled,
                                 "seconds": round(spent, 4), "mp_per_s": round(out_mp / spent, 3)})
            except Exception as exc:  # noqa: BLE001 - a benchmark that saw errors fails instead of printing ratios
                errors.append(f"{name} {device}/{backend}: {type(exc).__name__}: {exc}")
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    base = {(r["upscaler"], r["tiling"]): r["mp_per_s"] for r in rows if r["device"] == "cpu" and r["backend"] == "torch"}
    print(f"{args.size}x{args.size} -> {args.size * 4}x{args.size * 4} ({out_mp:.2f} MP out), "
          f"{torch.get_num_threads()} threads")
    print(f"{'upscaler':<22}{'device':<7}{'backend':<9}{'tiling':<7}{'s':>8}{'MP/s':>9}{'ratio':>8}")
    for row in rows:
        ref = base.get((row["upscaler"], row["tiling"]))
        row["ratio_vs_torch_cpu"] = round(row["mp_per_s"] / ref, 2) if ref else None
        ratio = f"{row['ratio_vs_torch_cpu']:.2f}" if ref else "-"
        print(f"{row['upscaler']:<22}{row['device']:<7}{row['backend']:<9}{row['tiling']:<7}{row['seconds']:>8.3f}"
              f"{row['mp_per_s']:>9.3f}{ratio:>8}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
