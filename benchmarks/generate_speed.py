"""Per-step time and peak RSS: sfumato vs a default diffusers pipeline, side by side in one run.

Each measurement runs in its own process (peak RSS is per process). Two models: the tiny SD1
model (64x64) and an SD 1.5-size model with random weights in the real config (512x512).

    python benchmarks/generate_speed.py               # both
    python benchmarks/generate_speed.py --only tiny   # quick
    python benchmarks/generate_speed.py --only tiny --sampler "DPM++ 2M Karras"   # any sampler, same scheduler both
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_sd15_random(out: Path) -> Path:
    """SD 1.5 architecture (UNet, VAE, CLIP-L) with random weights, saved as a diffusers folder (fp16 on disk)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sfumato.models.families import SD1
    from sfumato.models.singlefile import clip_tokenizer

    torch.manual_seed(0)
    skeleton = SD1.skeleton
    scheduler_config = dict(skeleton["scheduler"])
    scheduler = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    pipe = diffusers.StableDiffusionPipeline(
        unet=diffusers.UNet2DConditionModel.from_config(skeleton["unet"]),
        vae=diffusers.AutoencoderKL.from_config(skeleton["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**skeleton["text_encoder"])),
        tokenizer=clip_tokenizer("<|endoftext|>"), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    return out


def diffusers_scheduler(sampler: str, config: dict):
    """The scheduler a diffusers user would build for an A1111 sampler name: the same class and options we use."""
    import diffusers

    from sfumato.sampling.samplers import get_sampler

    chosen = get_sampler(sampler)
    return getattr(diffusers, chosen.scheduler).from_config(config, **chosen.options)


def child(runner: str, model: str, size: int, steps: int, sampler: str = "Euler") -> dict:
    """Runs in a fresh process: load, generate once, report per-step seconds and peak RSS."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    stamps: list[float] = []
    if runner == "sfumato":
        from sfumato.engine import Engine
        from sfumato.requests import GenerationRequest

        engine = Engine(model, dtype="float32")
        engine.load()
        request = GenerationRequest("a red apple on a table", seed=1, steps=steps, width=size, height=size,
                                    sampler=sampler, cfg_scale=7.0)
        engine.generate(request, progress=lambda done, total: stamps.append(time.perf_counter()) if done else None)
    else:
        import diffusers

        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32,
                                                                 local_files_only=True)
        pipe.scheduler = diffusers_scheduler(sampler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def on_step(pipe_, i, t, kwargs):
            stamps.append(time.perf_counter())
            return kwargs

        pipe("a red apple on a table", num_inference_steps=steps, guidance_scale=7.0, height=size, width=size,
             generator=torch.Generator().manual_seed(1), callback_on_step_end=on_step)
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"per_step_s": per_step, "peak_rss_mb": peak_mb}


def measure(runner: str, model: Path, size: int, steps: int, sampler: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", runner, str(model), str(size), str(steps), sampler],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(label: str, model: Path, size: int, steps: int, sampler: str) -> None:
    ours = measure("sfumato", model, size, steps, sampler)
    theirs = measure("diffusers", model, size, steps, sampler)
    print(f"{label} ({size}x{size}, {steps} steps, CFG, {sampler})")
    print(f"  per step   sfumato {ours['per_step_s']:.3f} s   diffusers {theirs['per_step_s']:.3f} s   "
          f"ratio sfumato/diffusers {ours['per_step_s'] / theirs['per_step_s']:.3f}")
    print(f"  peak RSS   sfumato {ours['peak_rss_mb']:.0f} MB   diffusers {theirs['peak_rss_mb']:.0f} MB   "
          f"ratio sfumato/diffusers {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["tiny", "sd15"])
    parser.add_argument("--sampler", default="Euler", help="A1111 sampler name, run by both (default Euler)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runner, model, size, steps, sampler = args.child
        print(json.dumps(child(runner, model, int(size), int(steps), sampler)))
        return
    from sfumato.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "tiny"):
            compare("tiny SD1", build_tiny("sd1", Path(tmp) / "tiny"), 64, 20, args.sampler)
        if args.only in (None, "sd15"):
            compare("SD 1.5-size UNet, random weights", build_sd15_random(Path(tmp) / "sd15"), 512, 4, args.sampler)


if __name__ == "__main__":
    main()
