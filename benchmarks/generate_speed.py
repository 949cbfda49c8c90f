"""Generation speed, side by side in one run: plain diffusers vs sfumato, each speed lever on its own and together.

Every configuration runs in its own process (peak memory is per process; compiled code does not leak between
rows): load, one warm-up generation (where compiling happens; its time is reported), then a timed generation.
Reported per row: images/s, seconds per step, peak memory (RSS on CPU, allocated on CUDA), PSNR of the image
against plain diffusers eager on the same seed (equal output: > 40 dB), and the ratio to diffusers eager.

    python benchmarks/generate_speed.py                          # CPU: SD 1.5-size at 512², every lever
    python benchmarks/generate_speed.py --only tiny              # quick, the tiny SD1 model
    python benchmarks/generate_speed.py --device cuda            # fp16, CUDA graphs (reduce-overhead)
    python benchmarks/generate_speed.py --device cuda --model sdxl --size 1024
    python benchmarks/generate_speed.py --rows diffusers,sfumato --sampler "DPM++ 2M Karras"

Models have random weights in the real configs (SD 1.5: UNet, VAE, CLIP-L; SDXL: UNet, VAE, CLIP-L + bigG).
Any row that fails makes the script exit non-zero without printing ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "a red apple on a table"

# row name -> settings: runner, compile mode ("auto": reduce-overhead on CUDA, default on CPU), dtype, cache
ROWS = {
    "diffusers": dict(runner="diffusers"),
    "diffusers+compile": dict(runner="diffusers", compile="auto"),
    "sfumato": dict(runner="sfumato"),
    "sfumato+compile": dict(runner="sfumato", compile="auto"),
    "sfumato+cache3": dict(runner="sfumato", cache=3),
    "sfumato+tome0.5": dict(runner="sfumato", tome=0.5),
    "sfumato+compile+cache3": dict(runner="sfumato", compile="auto", cache=3),
    "sfumato+bf16": dict(runner="sfumato", dtype="bfloat16"),
    "sfumato+bf16+compile": dict(runner="sfumato", dtype="bfloat16", compile="auto"),
    "sfumato+bf16+compile+cache3": dict(runner="sfumato", dtype="bfloat16", compile="auto", cache=3),
}
AGAIN = "@again"  # a row name + this: the same settings in a new process, compiled kernels from the disk cache


def settings_of(row: str) -> dict:
    return ROWS[row.removesuffix(AGAIN)]


def build_random(family: str, out: Path) -> Path:
    """SD 1.5 or SDXL architecture with random weights, saved as a diffusers folder (fp16 on disk)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sfumato.models.families import SD1, SDXL
    from sfumato.models.singlefile import clip_tokenizer

    torch.manual_seed(0)
    skeleton = (SD1 if family == "sd15" else SDXL).skeleton
    scheduler_config = dict(skeleton["scheduler"])
    scheduler = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    parts = dict(unet=diffusers.UNet2DConditionModel.from_config(skeleton["unet"]),
                 vae=diffusers.AutoencoderKL.from_config(skeleton["vae"]),
                 text_encoder=CLIPTextModel(CLIPTextConfig(**skeleton["text_encoder"])),
                 tokenizer=clip_tokenizer("<|endoftext|>"), scheduler=scheduler)
    if family == "sd15":
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    else:
        pipe = diffusers.StableDiffusionXLPipeline(
            **parts, text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**skeleton["text_encoder_2"])),
            tokenizer_2=clip_tokenizer("!"))
    pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    return out


def diffusers_scheduler(sampler: str, config: dict):
    """The scheduler a diffusers user would build for an A1111 sampler name: the same class and options we use."""
    import diffusers

    from sfumato.sampling.samplers import get_sampler

    chosen = get_sampler(sampler)
    return getattr(diffusers, chosen.scheduler).from_config(config, **chosen.options)


def _peak_mb(device: str) -> float:
    """Peak memory of this process: CUDA allocations, or the RSS high-water mark (VmHWM, which starts afresh at
    exec; ru_maxrss would carry over the parent's peak, e.g. the model-building parent's)."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(settings: dict, model: str, size: int, steps: int, batch: int, sampler: str, device: str,
          image_out: str) -> dict:
    """Runs in a fresh process: load, warm up, time one generation of `batch` images."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = settings.get("dtype") or ("float16" if device == "cuda" else "float32")
    mode = settings.get("compile")
    if mode == "auto":
        mode = "reduce-overhead" if device == "cuda" else "default"
    stamps: list[float] = []
    if settings["runner"] == "sfumato":
        from sfumato.engine import Engine
        from sfumato.requests import GenerationRequest

        engine = Engine(model, device=device, dtype=dtype, compile=mode)
        engine.load()

        def run(n_steps: int, record: bool):
            request = GenerationRequest(PROMPT, seed=1, steps=n_steps, width=size, height=size, sampler=sampler,
                                        cfg_scale=7.0, batch_size=batch, cache_interval=settings.get("cache", 1),
                                        token_merging_ratio=settings.get("tome", 0.0))
            hook = (lambda done, total: stamps.append(time.perf_counter()) if done else None) if record else None
            return [item.image for item in engine.generate(request, progress=hook).images]
    else:
        import diffusers

        cls = diffusers.StableDiffusionXLPipeline if (Path(model) / "text_encoder_2").exists() \
            else diffusers.StableDiffusionPipeline
        pipe = cls.from_pretrained(model, torch_dtype=getattr(torch, dtype), local_files_only=True).to(device)
        pipe.scheduler = diffusers_scheduler(sampler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        if mode:  # diffusers' own speed guide: channels-last UNet, torch.compile
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)

        def run(n_steps: int, record: bool):
            def on_step(pipe_, i, t, kwargs):
                if record:
                    stamps.append(time.perf_counter())
                return kwargs

            generator = [torch.Generator().manual_seed(1 + k) for k in range(batch)]
            return pipe(PROMPT, num_inference_steps=n_steps, guidance_scale=7.0, height=size, width=size,
                        num_images_per_prompt=batch, generator=generator, callback_on_step_end=on_step).images

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    run(steps, False)  # warm-up: compiles (or loads compiled code) every variant this schedule calls (full, cached)
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    images = run(steps, True)
    sync()
    seconds = time.perf_counter() - start
    images[0].save(image_out)
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else seconds / steps
    return {"images_per_s": batch / seconds, "per_step_s": per_step, "warm_up_s": warm, "peak_mb": _peak_mb(device)}


def psnr(path_a: str, path_b: str) -> float:
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(path_a).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(path_b).convert("RGB"), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def run_child(script: str, name: str, spec: dict) -> dict:
    """Run `script --child SPEC` in a fresh process and return the JSON it prints last (a failure raises, saying
    how the process ended: a kill by signal 9 is usually the out-of-memory killer)."""
    done = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        raise RuntimeError(f"row {name} failed ({how}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_in_child(script: str, family: str, out: Path, extra: list[str] = ()) -> Path:
    """`script --build FAMILY OUT` (`build_random`) in its own process, so the parent does not keep the model's
    memory while the rows run."""
    subprocess.run([sys.executable, script, "--build", family, str(out), *extra], check=True, capture_output=True)
    return out


def measure(row: str, model: Path, args, image_out: Path) -> dict:
    return run_child(__file__, row, {"row": row, "model": str(model), "size": args.size, "steps": args.steps,
                                     "batch": args.batch, "sampler": args.sampler, "device": args.device,
                                     "image": str(image_out)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["tiny"], help="the tiny SD1 model at 64² (quick)")
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sampler", default="Euler", help="A1111 sampler name, run by both (default Euler)")
    parser.add_argument("--rows", default=None, help=f"comma-separated, from: {', '.join(ROWS)}; NAME{AGAIN} runs "
                                                     "NAME again in a new process (warm-up from the compile cache)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_random(args.build[0], Path(args.build[1]))
        return
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(settings_of(spec["row"]), spec["model"], spec["size"], spec["steps"], spec["batch"],
                               spec["sampler"], spec["device"], spec["image"])))
        return
    rows = args.rows.split(",") if args.rows else [r for r in ROWS if args.device == "cpu" or "bf16" not in r]
    unknown = [r for r in rows if r.removesuffix(AGAIN) not in ROWS]
    if unknown or "diffusers" not in rows:
        parser.error(f"unknown rows {unknown}" if unknown else "--rows must include diffusers (the reference)")
    from sfumato.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("SFUMATO_HOME", str(Path(tmp) / "home"))  # a cold compile cache for this run
        if args.only == "tiny":
            model, label, args.size = build_tiny("sd1", Path(tmp) / "tiny"), "tiny SD1", args.size or 64
        else:
            model = build_in_child(__file__, args.model, Path(tmp) / args.model)
            label = {"sd15": "SD 1.5-size", "sdxl": "SDXL-size"}[args.model] + " (random weights)"
            args.size = args.size or (512 if args.model == "sd15" else 1024)
        results = {}
        for row in rows:
            results[row] = measure(row, model, args, Path(tmp) / f"{row}.png")
            print(f"  {row:30s} {results[row]['images_per_s']:.4f} img/s", file=sys.stderr, flush=True)
        reference = results["diffusers"]
        print(f"{label}, {args.size}x{args.size}, {args.steps} steps {args.sampler}, CFG 7, batch {args.batch}, "
              f"{args.device}, torch threads {os.cpu_count()}")
        print(f"  {'row':30s} {'img/s':>9s} {'s/step':>8s} {'warm-up s':>10s} {'peak MB':>8s} {'PSNR dB':>8s} "
              f"{'x diffusers':>11s}")
        for row, r in results.items():
            r["psnr_db"] = psnr(str(Path(tmp) / f"{row}.png"), str(Path(tmp) / "diffusers.png"))
            r["ratio"] = r["images_per_s"] / reference["images_per_s"]
            print(f"  {row:30s} {r['images_per_s']:9.4f} {r['per_step_s']:8.3f} {r['warm_up_s']:10.1f} "
                  f"{r['peak_mb']:8.0f} {r['psnr_db']:8.1f} {r['ratio']:10.2f}x")
        if args.json:
            args.json.write_text(json.dumps({"label": label, "size": args.size, "steps": args.steps,
                                             "batch": args.batch, "device": args.device, "rows": results},
                                            indent=2) + "\n")


if __name__ == "__main__":
    main()
