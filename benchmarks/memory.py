"""Memory per precision, 8-bit weights, GGUF and low-memory preset, side by side in one run.

Every row runs in its own process: load, one generation, then peak memory (RSS high-water mark on CPU, allocated on
CUDA; loading counts), the memory still held after the generation, the denoiser's weight memory, seconds per image
and PSNR of the image against the float32 (CPU) / float16 (CUDA) row.

    python benchmarks/memory.py                              # SD 1.5-size at 512², CPU
    python benchmarks/memory.py --model sdxl --steps 1       # SDXL-size at 1024² (the targets: <= 12 GB RSS on CPU)
    python benchmarks/memory.py --device cuda --model sdxl   # peak GPU memory (target <= 8 GB with --lowvram)
    python benchmarks/memory.py --rows base,bf16,int8

Models have random weights in the real configs (`generate_speed.build_random`); their images are noise-like, so
PSNR here measures how far a row moves the output, not how good it looks (quality on real images: the
embedded-model numbers in the README). A row that fails makes the script exit non-zero without a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate_speed import PROMPT, _peak_mb, build_in_child, build_random, psnr, run_child  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROWS = {  # name -> engine settings (dtype, memory preset and options, GGUF model)
    "base": dict(),
    "bf16": dict(dtype="bfloat16"),
    "fp16": dict(dtype="float16"),
    "int8": dict(quantize="int8"),
    "fp8": dict(quantize="fp8"),
    "bf16+int8": dict(dtype="bfloat16", quantize="int8"),
    "gguf-q8_0": dict(gguf="q8_0"),
    "gguf-q4_0": dict(gguf="q4_0"),
    "medvram": dict(preset="medvram"),
    "lowvram": dict(preset="lowvram"),
    "lowvram+bf16+int8": dict(preset="lowvram", dtype="bfloat16", quantize="int8"),
}


def child(settings: dict, model: str, size: int, steps: int, device: str, image_out: str) -> dict:
    import torch

    from sfumato.engine import Engine
    from sfumato.memory import memory_settings
    from sfumato.memory.quantize import weight_bytes
    from sfumato.requests import GenerationRequest

    torch.set_num_threads(os.cpu_count() or 1)
    memory = memory_settings(settings.get("preset"), quantize=settings.get("quantize"))
    dtype = settings.get("dtype") or ("float16" if device == "cuda" else "float32")
    engine = Engine(model, device=device, dtype=dtype, memory=memory)
    loaded = engine.load()
    denoiser_mb = weight_bytes(loaded.pipe.unet) / 2**20
    start = time.perf_counter()
    request = GenerationRequest(PROMPT, seed=1, steps=steps, width=size, height=size, sampler="Euler", cfg_scale=7.0)
    image = engine.generate(request).images[0].image
    seconds = time.perf_counter() - start
    image.save(image_out)
    from sfumato.memory import release_freed_memory

    release_freed_memory()
    return {"seconds": seconds, "peak_mb": _peak_mb(device), "resident_mb": _resident_mb(device),
            "denoiser_mb": denoiser_mb, "modes": loaded.memory}


def _resident_mb(device: str) -> float:
    """Memory held after the generation (what a server keeps): CUDA allocations or the current RSS."""
    import torch

    if device == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def measure(row: str, model: Path, args, image_out: Path) -> dict:
    return run_child(__file__, row, {"row": row, "model": str(model), "size": args.size, "steps": args.steps,
                                     "device": args.device, "image": str(image_out)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", help=f"comma-separated, from: {', '.join(ROWS)} (base always runs first)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="the tiny SD1 test model at 64² (tests the script)")
    args = parser.parse_args()
    if args.build:  # in a child process: the parent must not hold the model while rows measure memory
        from sfumato.models.convert import convert

        model = build_random(args.build[0], Path(args.build[1]))
        for quant in filter(None, (args.gguf or "").split(",")):
            convert(model, model.with_suffix(f".{quant}.gguf"), quant=quant)
        return
    if args.child:
        spec = json.loads(args.child)
        settings = ROWS[spec["row"]]
        model = spec["model"] if "gguf" not in settings else str(Path(spec["model"]).with_suffix(
            f".{settings['gguf']}.gguf"))
        print(json.dumps(child(settings, model, spec["size"], spec["steps"], spec["device"], spec["image"])))
        return
    rows = ["base"] + [r for r in (args.rows.split(",") if args.rows else ROWS) if r != "base"]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}")
    args.size = args.size or (64 if args.tiny else 512 if args.model == "sd15" else 1024)
    with tempfile.TemporaryDirectory() as tmp:
        quants = ",".join(sorted({ROWS[r]["gguf"] for r in rows if "gguf" in ROWS[r]}))
        if args.tiny:
            from sfumato.models.tiny import build_tiny

            model = build_tiny("sd1", Path(tmp) / "tiny-sd1")
        else:
            model = build_in_child(__file__, args.model, Path(tmp) / args.model, ["--gguf", quants])
        results = {}
        for row in rows:
            results[row] = measure(row, model, args, Path(tmp) / f"{row}.png")
            print(f"  {row:22s} peak {results[row]['peak_mb']:8.0f} MB", file=sys.stderr, flush=True)
        base = results["base"]
        label = "tiny SD1" if args.tiny else {"sd15": "SD 1.5-size", "sdxl": "SDXL-size"}[args.model]
        print(f"{label} (random weights), {args.size}x{args.size}, {args.steps} Euler steps, CFG 7, {args.device}, "
              f"peak = {'max RSS' if args.device == 'cpu' else 'max CUDA allocated'}")
        print(f"  {'row':22s} {'peak MB':>8s} {'x base':>7s} {'held MB':>8s} {'UNet MB':>8s} {'x base':>7s} "
              f"{'s/image':>8s} {'PSNR dB':>8s}  modes")
        for row, r in results.items():
            r["psnr_db"] = psnr(str(Path(tmp) / f"{row}.png"), str(Path(tmp) / "base.png"))
            print(f"  {row:22s} {r['peak_mb']:8.0f} {r['peak_mb'] / base['peak_mb']:7.2f} {r['resident_mb']:8.0f} "
                  f"{r['denoiser_mb']:8.0f} {r['denoiser_mb'] / base['denoiser_mb']:7.2f} {r['seconds']:8.1f} "
                  f"{r['psnr_db']:8.1f}  {', '.join(r['modes']) or '-'}")
        if args.json:
            args.json.write_text(json.dumps({"label": label, "size": args.size, "steps": args.steps,
                                             "device": args.device, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
