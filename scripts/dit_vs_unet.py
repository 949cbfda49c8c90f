"""DiT vs U-Net on the emoji latents at equal training compute: adherence, FID and images/s per model size (CPU).

    python scripts/dit_vs_unet.py --data /work/data/emoji --steps 1500 --classifier /tmp/emoji-classifier.safetensors

Each model is trained from scratch by `sfumato train scratch` with the shipped emoji recipe
(`sfumato/models/configs/emoji/train-unet.toml`: batch 64, lr 5e-4, warm-up 200, min-SNR 5, EMA 0.999, MiniLM text,
the shipped sfumato-emoji VAE: 8x8 latents) for the same number of steps, so every model sees the same images in the
same order; `--arch dit` puts a text-conditioned DiT (PixArt-α blocks, patch 2: 16 tokens) in the U-Net's place. The
runs go one after another on the same machine, each in a fresh process, and their training wall time is recorded
(other work on the machine slows some runs: the cost per training image is therefore also measured for every model
side by side in one process at the end, `train_images_per_second_quiet`).
Each trained model is then scored by `scripts/emoji_quality.py` (reference classifier top-1/top-5 retrieval among all
base emoji, Open-NSFW top-1 and FID) and its images/s measured after a warm-up (128 prompts in one batch, the family's
default 20 DPM++ 2M steps, CFG 5).
Writes OUT/dit-vs-unet.json, OUT/dit-vs-unet.png (the scaling plot) and OUT/dit-vs-unet-samples.png (rows: the
models in --models order; columns: the same eight prompts and seeds). Runs are resumable (checkpoints every 250 steps; finished models
are kept in --work and not retrained).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

RECIPE = ROOT / "sfumato/models/configs/emoji/train-unet.toml"
UNET = json.loads((ROOT / "sfumato/models/configs/emoji/unet.json").read_text())
DIT = {"_class_name": "TextDiT", "sample_size": 8, "patch_size": 2}
MODELS = {  # name -> (arch, config)
    "unet-xs": ("unet", {**UNET, "block_out_channels": [32, 64, 96], "attention_head_dim": 16}),
    "unet-s": ("unet", UNET),  # the shipped sfumato-emoji architecture
    "dit-xs": ("dit", {**DIT, "num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32}),
    "dit-s": ("dit", {**DIT, "num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 64}),
    "dit-m": ("dit", {**DIT, "num_layers": 8, "num_attention_heads": 6, "attention_head_dim": 48}),
}


def train(name: str, steps: int, data: Path, work: Path) -> dict:
    """Train one model (resuming a partial run); its wall time over the steps this process ran."""
    arch, config = MODELS[name]
    run = work / name
    done = run / "train.json"
    if done.exists():
        return json.loads(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    (work / f"{name}.json").write_text(json.dumps(config, indent=2))
    command = [sys.executable, "-m", "sfumato.cli", "train", "scratch", "--config", str(RECIPE), "--arch", arch,
               "--unet-config", str(work / f"{name}.json"), "--vae", str(ROOT / "sfumato/models/embedded/sfumato-emoji/vae"),
               "--data", str(data), "--output", str(run), "--steps", str(steps), "--validate-every", "0",
               "--checkpoint-every", "250", "--resume"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    rows = (run / "log.csv").read_text().splitlines()[1:]
    first, last = int(rows[0].split(",")[0]), int(rows[-1].split(",")[0])
    params = _parameters(run / "model" / "unet")
    result = {"arch": arch, "config": config, "parameters_m": params / 1e6, "steps": last, "images_seen": last * 64,
              "train_seconds": seconds, "train_seconds_per_step": seconds / max(1, last - first + 1),
              "final_loss_mean_last_100": sum(float(r.split(",")[1]) for r in rows[-100:]) / len(rows[-100:])}
    done.write_text(json.dumps(result, indent=2))
    return result


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                total += _product(shape)
    return total


def _product(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def images_per_second(model: Path, count: int = 128) -> float:
    """Generation throughput of a loaded, warmed-up model: `count` prompts in one batch, default sampler and steps."""
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    engine = Engine(str(model))
    engine.generate(GenerationRequest(prompt="warm-up", seed=0))
    requests = [GenerationRequest(prompt=f"emoji {i}", seed=i) for i in range(count)]
    started = time.perf_counter()
    engine.generate_many(requests)
    return count / (time.perf_counter() - started)


def training_throughput(names: list[str], batch: int = 64, steps: int = 12) -> dict[str, float]:
    """Training images/s of each denoiser (forward, backward and AdamW step on 8x8x4 latents with 32 tokens of 384-d
    text, batch 64), measured one after another in this process after a warm-up: the side-by-side cost per image."""
    import torch
    from diffusers import UNet2DConditionModel

    from sfumato.models.textdit import build_textdit

    out = {}
    for name in names:
        arch, config = MODELS[name]
        torch.manual_seed(0)
        if arch == "dit":
            model = build_textdit(dict(config), 384)
        else:
            model = UNet2DConditionModel.from_config({**config, "cross_attention_dim": 384,
                                                      "projection_class_embeddings_input_dim": 384})
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        latents, text = torch.randn(batch, 4, 8, 8), torch.randn(batch, 32, 384)
        extra = {"class_labels": torch.randn(batch, 384)} if arch == "unet" else {}
        timesteps = torch.randint(0, 1000, (batch,))

        def step():
            loss = model(latents, timesteps, encoder_hidden_states=text, return_dict=False, **extra)[0].pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        for _ in range(3):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        out[name] = batch * steps / (time.perf_counter() - started)
    return out


SAMPLE_PROMPTS = ["red apple", "grinning face", "dog face", "rocket", "pizza", "red heart", "ghost", "snowman"]


def sample_grid(work: Path, names: list[str], path: Path) -> None:
    """Rows: the models (in `names` order); columns: the same prompts and seeds, at the family defaults."""
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest
    from sfumato.training.report import image_grid

    images = []
    for name in names:
        engine = Engine(str(work / name / "model"))
        requests = [GenerationRequest(prompt=p, seed=100 + i) for i, p in enumerate(SAMPLE_PROMPTS)]
        images += [r.images[0].image.resize((64, 64)) for r in engine.generate_many(requests)]
    image_grid(images, columns=len(SAMPLE_PROMPTS)).save(path)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for arch, marker in (("unet", "o"), ("dit", "s")):
        rows = sorted((r for r in results.values() if r["arch"] == arch), key=lambda r: r["parameters_m"])
        if not rows:
            continue
        x = [r["parameters_m"] for r in rows]
        label = "U-Net" if arch == "unet" else "DiT (patch 2)"
        axes[0].plot(x, [r["classifier_top1"] for r in rows], marker=marker, label=label)
        axes[1].plot(x, [r["fid_open_nsfw"] for r in rows], marker=marker, label=label)
        axes[2].plot(x, [r["images_per_second"] for r in rows], marker=marker, label=label)
        for r, xi in zip(rows, x):
            axes[0].annotate(r["name"], (xi, r["classifier_top1"]), fontsize=7)
    for ax, title in zip(axes, ("reference-classifier top-1 (higher is better)", "FID, Open-NSFW features (lower)",
                                "images/s, 20 steps batched (higher)")):
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 3, 5, 7, 10])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("denoiser parameters (M)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    steps = next(iter(results.values()))["steps"]
    fig.suptitle(f"DiT vs U-Net on emoji latents, equal training compute ({steps} steps x 64 images each)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/data/emoji"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--classifier", type=Path, default=Path("/tmp/emoji-classifier.safetensors"),
                        help="reference classifier (trained on the renders when the file does not exist)")
    parser.add_argument("--limit", type=int, default=624, help="emoji names generated per model (evenly spaced)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dit-vs-unet"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from emoji_quality import evaluate

    results = {}
    for name in args.models.split(","):
        trained = train(name, args.steps, args.data, args.work)
        scored_file = args.work / name / "quality.json"
        if not scored_file.exists():
            evaluate(str(args.work / name / "model"), args.data, None, None, None, args.limit, args.work / name,
                     args.classifier)
        quality = json.loads(scored_file.read_text())
        speed_file = args.work / name / "speed.json"
        if not speed_file.exists():
            speed_file.write_text(json.dumps({"images_per_second": images_per_second(args.work / name / "model")}))
        results[name] = {"name": name, **trained, "classifier_top1": quality["classifier"]["top1"],
                         "classifier_top5": quality["classifier"]["top5"], "open_nsfw_top1": quality["top1"],
                         "fid_open_nsfw": quality["fid"], "images_per_second": json.loads(speed_file.read_text())["images_per_second"],
                         "paraphrase_top5": quality["classifier"]["paraphrase_top5"]}
        print(json.dumps(results[name]), file=sys.stderr)
    for name, rate in training_throughput(list(results)).items():
        results[name]["train_images_per_second_quiet"] = rate
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": f"python scripts/dit_vs_unet.py --steps {args.steps} --limit {args.limit}",
              "recipe": str(RECIPE.relative_to(ROOT)), "emoji_scored": args.limit, "models": results}
    (args.out / "dit-vs-unet.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "dit-vs-unet.png")
    sample_grid(args.work, list(results), args.out / "dit-vs-unet-samples.png")
    for r in results.values():
        print(f"{r['name']:8s} {r['parameters_m']:6.2f}M  top1 {r['classifier_top1']:.3f}  top5 {r['classifier_top5']:.3f}"
              f"  FID {r['fid_open_nsfw']:7.2f}  {r['images_per_second']:6.1f} img/s  train {r['train_seconds']:6.0f} s"
              f"  ({r['train_images_per_second_quiet']:.0f} train img/s side by side)")


if __name__ == "__main__":
    main()
