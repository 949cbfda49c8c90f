"""Every CUDA check of sfumato in one run, for the minutes a borrowed GPU machine is at hand.

    python benchmarks/gpu_acceptance.py                       # one H100: about 8 minutes
    python benchmarks/gpu_acceptance.py --device cpu --tiny   # every part on tiny models, about a minute (CI runs it)
    python benchmarks/gpu_acceptance.py --parts samplers,speed-sd15 --budget-scale 0.5

Writes `benchmarks/gpu_acceptance.json` (or `--json`) and prints a Markdown table. Each part runs in its own process
with its own time budget; a part that fails or runs out of time is reported as such and the others go on; the exit
status is 1 when any part failed. Parts:

| part | what | numbers |
|---|---|---|
| samplers | every A1111 sampler (2 steps) and each task (txt2img, img2img, inpaint, hires fix) on the device | failures |
| speed-sd15 | SD 1.5-size UNet at 512²: diffusers eager / compiled vs sfumato eager / compile / step cache (benchmarks/generate_speed.py) | images/s, ratio, PSNR |
| speed-sdxl | SDXL-size at 1024², the same rows plus ToMe | images/s, ratio, PSNR |
| dpm-syncs | DPM++ 2M Karras, sfumato vs diffusers, under `torch.cuda.set_sync_debug_mode("warn")` | s/image, host syncs |
| memory | peak GPU memory per memory preset at SDXL-size (benchmarks/memory.py) | MB |
| server | `sfumato serve` under load vs the engine (benchmarks/server_load.py) | ratio |
| lora-step | LoRA training steps in fp16 and bf16 | loss finite, s/step |
| ray | one Ray replica makes a batch (`sfumato batch --ray`) | images |

`--tiny` swaps every model for the tiny random-weight ones of the test suite (64² images), so the script itself is
tested on any machine; its numbers mean nothing then. On a GPU machine without internet, bring wheels (see
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("samplers", "speed-sd15", "speed-sdxl", "dpm-syncs", "memory", "server", "lora-step", "ray")
BUDGET_S = {"samplers": 60, "speed-sd15": 120, "speed-sdxl": 120, "dpm-syncs": 45, "memory": 90, "server": 60,
            "lora-step": 30, "ray": 45}  # on one H100; --tiny scales them


# ---------------------------------------------------------------- the parts (each runs in a child process)


def _tiny_model(workdir: Path) -> Path:
    from sfumato.models.tiny import build_tiny

    path = workdir / "tiny-sd1"
    if not path.exists():
        build_tiny("sd1", path)
    return path


def part_samplers(device: str, tiny: bool, workdir: Path) -> dict:
    from PIL import Image

    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest
    from sfumato.sampling.samplers import SAMPLERS

    model = str(_tiny_model(workdir)) if tiny else None
    engine = Engine(device=device)
    size = 64 if tiny else 512
    failures, done = [], 0
    base = dict(prompt="a red apple", model=model, steps=2, seed=1, width=size, height=size)
    for name in SAMPLERS:
        try:
            engine.generate(GenerationRequest(sampler=name, **base))
            done += 1
        except Exception as exc:  # every sampler is tried; the failures are the result
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
    init, mask = workdir / "init.png", workdir / "mask.png"
    Image.new("RGB", (size, size), (200, 40, 40)).save(init)
    hole = Image.new("L", (size, size), 0)
    hole.paste(255, (size // 4, size // 4, size // 2, size // 2))
    hole.save(mask)
    tasks = {"img2img": dict(init_image=str(init), strength=0.6), "inpaint": dict(init_image=str(init), mask=str(mask)),
             "hires": dict(hires_scale=1.5)}
    for task, extra in tasks.items():
        try:
            engine.generate(GenerationRequest(sampler="Euler a", **base, **extra))
            done += 1
        except Exception as exc:
            failures.append(f"{task}: {type(exc).__name__}: {str(exc)[:120]}")
    return {"ok": not failures, "runs": done, "failures": failures}


def _script(name: str, args: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        done = subprocess.run([sys.executable, str(HERE / name), *args, "--json", str(out)], capture_output=True,
                              text=True, timeout=timeout)
        rows = json.loads(out.read_text()) if out.exists() else None
    return {"ok": done.returncode == 0, "rows": rows, "tail": done.stdout[-1500:] + done.stderr[-800:]}


def part_speed(device: str, tiny: bool, workdir: Path, model: str, budget: float) -> dict:
    rows = "diffusers,diffusers+compile,sfumato,sfumato+compile,sfumato+cache3"
    if model == "sdxl":
        rows += ",sfumato+tome0.5"
    if tiny:
        return _script("generate_speed.py", ["--only", "tiny", "--device", device, "--steps", "2",
                                             "--rows", "diffusers,sfumato,sfumato+cache3"], budget)
    size = "512" if model == "sd15" else "1024"
    return _script("generate_speed.py", ["--device", device, "--model", model, "--size", size, "--steps", "8",
                                         "--rows", rows], budget)


def part_dpm_syncs(device: str, tiny: bool, workdir: Path) -> dict:
    import warnings

    import torch

    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    model = str(_tiny_model(workdir)) if tiny else None
    size = 64 if tiny else 512
    engine = Engine(device=device)
    request = GenerationRequest(prompt="a red apple", model=model, sampler="DPM++ 2M Karras", steps=8 if tiny else 20,
                                seed=1, width=size, height=size)
    engine.generate(request)  # load and warm up
    counted = device == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if counted:
            torch.cuda.set_sync_debug_mode("warn")
        started = time.perf_counter()
        engine.generate(request)
        if counted:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("default")
        seconds = time.perf_counter() - started
    syncs = sum("synchroniz" in str(w.message) for w in caught) if counted else None
    return {"ok": True, "seconds_per_image": round(seconds, 3), "host_syncs": syncs}


def part_memory(device: str, tiny: bool, workdir: Path, budget: float) -> dict:
    if tiny:
        return _script("memory.py", ["--device", device, "--tiny", "--steps", "1", "--rows", "base,lowvram"], budget)
    return _script("memory.py", ["--device", device, "--model", "sdxl", "--steps", "1",
                                 "--rows", "base,medvram,lowvram"], budget)


def part_server(device: str, tiny: bool, workdir: Path, budget: float) -> dict:
    done = subprocess.run([sys.executable, str(HERE / "server_load.py"), "--clients", "4",
                           "--requests", "16" if tiny else "400", "--unbatched-requests", "4" if tiny else "48",
                           "--rounds", "1" if tiny else "3", "--data-dir", str(workdir / "server")],
                          capture_output=True, text=True, timeout=budget)  # the server picks CUDA when there is one
    lines = [x for x in done.stdout.splitlines() if x.strip()]
    return {"ok": done.returncode == 0, "summary": " / ".join(x.strip() for x in lines if "x" in x and (
        "ratio" in x or "batching" in x or "engine" in x))[-400:] or (lines[-1] if lines else ""),
        "tail": done.stdout[-1500:] + done.stderr[-800:]}


def part_lora_step(device: str, tiny: bool, workdir: Path) -> dict:
    import torch
    from PIL import Image

    from sfumato.training.config import TrainConfig
    from sfumato.training.trainer import train

    data = workdir / "squares"
    data.mkdir(exist_ok=True)
    for i, colour in enumerate(("red", "green", "blue", "yellow")):
        Image.new("RGB", (64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} square")
    model = _tiny_model(workdir)
    out = {}
    precisions = ["bf16"] + (["fp16"] if device == "cuda" else [])
    for precision in precisions:
        config = TrainConfig(method="lora", data=str(data), output=str(workdir / f"lora-{precision}"), model=str(model),
                             steps=3, batch_size=2, resolution=64, rank=2, mixed_precision=precision,
                             cache_dir=str(workdir / "cache"), learning_rate=1e-4)
        started = time.perf_counter()
        result = train(config, say=lambda m: None)
        loss = result.losses[-1]
        out[precision] = {"final_loss": round(loss, 4), "finite": bool(torch.isfinite(torch.tensor(loss))),
                          "seconds": round(time.perf_counter() - started, 2)}
    return {"ok": all(v["finite"] for v in out.values()), **out}


def part_ray(device: str, tiny: bool, workdir: Path, budget: float) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"ok": False, "skipped": "ray is not installed"}
    plan = workdir / "plan.jsonl"
    model = _tiny_model(workdir) if tiny else None
    rows = [{"prompt": f"a red apple {i}", "seed": i, "steps": 2, **({"model": str(model), "width": 64, "height": 64}
                                                                     if tiny else {})} for i in range(4)]
    plan.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, "-m", "sfumato.cli", "batch", str(plan), "--out", str(workdir / "ray-out"),
                           "--ray", "--replicas", "1", "--device", device, "--safety", "off"]
                          + (["--gpus-per-replica", "1"] if device == "cuda" else []),
                          capture_output=True, text=True, timeout=budget)
    images = len(list((workdir / "ray-out").rglob("*.png")))
    return {"ok": done.returncode == 0 and images == len(rows), "images": images,
            "tail": (done.stdout + done.stderr)[-800:]}


def run_part(name: str, device: str, tiny: bool, workdir: Path, budget: float) -> dict:
    if name == "samplers":
        return part_samplers(device, tiny, workdir)
    if name in ("speed-sd15", "speed-sdxl"):
        return part_speed(device, tiny, workdir, name.split("-")[1], budget)
    if name == "dpm-syncs":
        return part_dpm_syncs(device, tiny, workdir)
    if name == "memory":
        return part_memory(device, tiny, workdir, budget)
    if name == "server":
        return part_server(device, tiny, workdir, budget)
    if name == "lora-step":
        return part_lora_step(device, tiny, workdir)
    return part_ray(device, tiny, workdir, budget)


# ---------------------------------------------------------------- the parent: one process per part


def summary(name: str, result: dict) -> str:
    if "error" in result:
        return result["error"]
    if name == "samplers":
        return f"{result['runs']} runs, {len(result['failures'])} failed" + (
            f": {result['failures'][0]}" if result["failures"] else "")
    if name == "dpm-syncs":
        syncs = "n/a (CPU)" if result["host_syncs"] is None else result["host_syncs"]
        return f"{result['seconds_per_image']} s/image, host syncs {syncs}"
    if name == "lora-step":
        return ", ".join(f"{k}: loss {v['final_loss']} in {v['seconds']} s" for k, v in result.items() if isinstance(v, dict))
    if name == "ray":
        return result.get("skipped") or f"{result['images']} images"
    if result.get("summary"):
        return result["summary"]
    rows = (result.get("rows") or {}).get("rows")
    if isinstance(rows, dict):
        return "; ".join(f"{row}: " + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in r.items() if k in (
            "images_per_s", "ratio", "psnr_db", "peak_mb") and isinstance(v, (int, float))) for row, r in rows.items())
    tail = (result.get("tail") or "").strip().splitlines()
    return tail[-1][:300] if tail else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight models everywhere (tests the script)")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    parser.add_argument("--json", type=Path, default=HERE / "gpu_acceptance.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        budget = BUDGET_S[args.child] * args.budget_scale * (3 if args.tiny else 1)
        result = run_part(args.child, args.device, args.tiny, args.workdir, budget)
        print("RESULT " + json.dumps(result))
        return 0
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    report = {"device": args.device, "tiny": args.tiny, "parts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in parts:
            budget = BUDGET_S[name] * args.budget_scale * (3 if args.tiny else 1)
            started = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, __file__, "--child", name, "--device", args.device,
                                       "--workdir", tmp, "--budget-scale", str(args.budget_scale)]
                                      + (["--tiny"] if args.tiny else []),
                                      capture_output=True, text=True, timeout=budget + 30)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                result = json.loads(line[7:]) if line else {
                    "ok": False, "error": f"exit {done.returncode}: " + (done.stderr.strip().splitlines() or [""])[-1][:300]}
            except subprocess.TimeoutExpired:
                result = {"ok": False, "error": f"ran out of its {budget:.0f} s budget"}
            result["seconds"] = round(time.perf_counter() - started, 1)
            report["parts"][name] = result
            print(f"{name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s", file=sys.stderr, flush=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("| part | ok | seconds | result |\n|---|---|---|---|")
    for name, result in report["parts"].items():
        print(f"| {name} | {'yes' if result['ok'] else '**no**'} | {result['seconds']} | {summary(name, result)} |")
    return 0 if all(r["ok"] for r in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
