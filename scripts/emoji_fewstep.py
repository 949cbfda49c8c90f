"""Quality against steps for the few-step emoji model (sfumato-emoji-lcm) and the base model, side by side.

    python scripts/emoji_fewstep.py --data EMOJI_DATA --classifier CLASSIFIER.safetensors [--limit N]
        [--lcm sfumato/models/embedded/sfumato-emoji-lcm] [--out docs]

For each configuration, one image per base emoji name (seed = its index) is generated in batches and scored with
`scripts/emoji_quality.py`'s retrieval (the reference classifier's top-1 / top-5 among all 1,870 renders, and
Open-NSFW FID); images/s is measured in the same process. Writes OUT/emoji-lcm-steps.json, the plot
OUT/emoji-lcm-steps.png and the sample sheet OUT/emoji-lcm.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emoji_quality import evaluate  # noqa: E402

from sfumato.models.embedded import EMBEDDED_DIR, embedded_fast_model  # noqa: E402

CONFIGS = [  # (label, model key, sampler, steps, cfg)
    ("base, Euler a, CFG 2 (default at 8)", "base", "Euler a", [1, 2, 4, 8], 2.0),
    ("base, LCM sampler, CFG 1 (not distilled)", "base", "LCM", [2, 4], 1.0),
    ("sfumato-emoji-lcm, LCM, CFG 1", "lcm", "LCM", [1, 2, 4, 8], 1.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--lcm", type=Path, default=embedded_fast_model())
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    models = {"base": str(EMBEDDED_DIR), "lcm": str(args.lcm)}
    rows = []
    for label, key, sampler, steps_list, cfg in CONFIGS:
        for steps in steps_list:
            report = evaluate(models[key], args.data, sampler, steps, cfg, args.limit, None, args.classifier)
            rows.append({"label": label, "model": key, "sampler": sampler, "steps": steps, "cfg_scale": cfg,
                         "top1": report["classifier"]["top1"], "top5": report["classifier"]["top5"],
                         "fid": report["fid"], "images_per_second": 1.0 / report["seconds_per_image_batched"]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emoji-lcm-steps.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "emoji-lcm-steps.png")
    sheet(models, args.out / "emoji-lcm.png")
    print(json.dumps(rows, indent=2))


SHEET_PROMPTS = ["red apple", "grinning face", "dog face", "rocket", "pizza", "ghost", "rainbow", "flag: Japan"]
SHEET_ROWS = [("base, Euler a, 8 steps", "base", "Euler a", 8, 2.0),
              ("base, Euler a, 2 steps", "base", "Euler a", 2, 2.0),
              ("lcm, 2 steps", "lcm", "LCM", 2, 1.0), ("lcm, 1 step", "lcm", "LCM", 1, 1.0)]


def sheet(models: dict[str, str], path: Path) -> None:
    """One row per configuration, the same eight prompts and seeds, upscaled 4x (nearest) with labels."""
    from PIL import Image, ImageDraw

    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    cell, label_w = 128, 190
    canvas = Image.new("RGB", (label_w + cell * len(SHEET_PROMPTS), cell * len(SHEET_ROWS)), "white")
    draw = ImageDraw.Draw(canvas)
    engines = {key: Engine(path) for key, path in models.items()}
    for r, (label, key, sampler, steps, cfg) in enumerate(SHEET_ROWS):
        draw.text((6, r * cell + cell // 2 - 6), label, fill="black")
        for c, prompt in enumerate(SHEET_PROMPTS):
            image = engines[key].generate(GenerationRequest(prompt, seed=c, sampler=sampler, steps=steps,
                                                            cfg_scale=cfg)).images[0].image
            canvas.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (label_w + c * cell, r * cell))
    canvas.save(path)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality, speed) = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        quality.plot([r["steps"] for r in mine], [r["top1"] for r in mine], "o-", label=label)
        speed.plot([r["steps"] for r in mine], [r["images_per_second"] for r in mine], "o-", label=label)
    quality.set(xscale="log", xlabel="steps", ylabel="reference-classifier top-1", title="adherence vs steps")
    speed.set(xscale="log", xlabel="steps", ylabel="images / s (batched, 2-core CPU)", title="speed vs steps")
    for axis in (quality, speed):
        axis.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        axis.grid(alpha=0.3)
    quality.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
