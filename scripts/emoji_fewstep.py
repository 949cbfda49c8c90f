"""Quality and speed against steps for the embedded model's few-step setting (`--fast`), side by side.

    python scripts/emoji_fewstep.py --data EMOJI_DATA --classifier CLASSIFIER.safetensors [--limit N]
        [--distilled RUN_MODEL ...] [--out docs]

For each configuration, one image per base emoji name (seed = its index) is generated in batches and scored with
`scripts/emoji_quality.py`'s retrieval (the reference classifier's top-1 / top-5 among all 1,870 renders, and
Open-NSFW FID). Configurations: the default (Euler a, CFG 2) and `--fast`'s sampler (LCM, CFG 1: one UNet pass per
step) at 1, 2, 4 and 8 steps, plus any `--distilled` models (e.g. a `sfumato train lcm` result) with LCM at CFG 1.
Speed is then measured alone, side by side in this process: the default (8 steps) against `--fast` (2 steps),
one image per call and in batches of 128. Writes OUT/emoji-lcm-steps.json, the plot OUT/emoji-lcm-steps.png and
the sample sheet OUT/emoji-lcm.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emoji_quality import evaluate  # noqa: E402

from sfumato.models.embedded import EMBEDDED_DIR  # noqa: E402

CONFIGS = [  # (label, model key, sampler, steps, cfg)
    ("default: Euler a, CFG 2", "base", "Euler a", [1, 2, 4, 8], 2.0),
    ("--fast: LCM sampler, CFG 1", "base", "LCM", [1, 2, 4, 8], 1.0),
]
SPEED = [("default (Euler a, 8 steps, CFG 2)", "Euler a", 8, 2.0), ("--fast (LCM, 2 steps, CFG 1)", "LCM", 2, 1.0)]


def speed(model: str, repeats: int = 64, batch: int = 128) -> list[dict]:
    """Images/s of the default and of --fast, alone, one image per call and batched, interleaved so drift is shared."""
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    engine = Engine(model)
    names = ["red apple", "grinning face", "dog face", "rocket", "pizza", "ghost", "rainbow", "flag: Japan"]
    totals = {label: {"single": 0.0, "batched": 0.0} for label, *_ in SPEED}
    for _, sampler, steps, cfg in SPEED:  # warm-up
        engine.generate(GenerationRequest("red apple", sampler=sampler, steps=steps, cfg_scale=cfg))
    for round_ in range(4):
        for label, sampler, steps, cfg in SPEED:
            start = time.perf_counter()
            for i in range(repeats // 4):
                engine.generate(GenerationRequest(names[i % len(names)], seed=i, sampler=sampler, steps=steps,
                                                  cfg_scale=cfg))
            totals[label]["single"] += time.perf_counter() - start
            requests = [GenerationRequest(names[i % len(names)], seed=i, sampler=sampler, steps=steps, cfg_scale=cfg)
                        for i in range(batch // 4)]
            start = time.perf_counter()
            engine.generate_many(requests)
            totals[label]["batched"] += time.perf_counter() - start
    rows = [{"setting": label, "images_per_s_single": repeats / totals[label]["single"],
             "images_per_s_batched": batch / totals[label]["batched"]} for label, *_ in SPEED]
    for row in rows[1:]:
        row["speedup_single"] = row["images_per_s_single"] / rows[0]["images_per_s_single"]
        row["speedup_batched"] = row["images_per_s_batched"] / rows[0]["images_per_s_batched"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--distilled", type=Path, action="append", default=[], help="a distilled model to compare")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    models = {"base": str(EMBEDDED_DIR), **{path.name: str(path) for path in args.distilled}}
    configs = CONFIGS + [(f"{path.name} (distilled), LCM, CFG 1", path.name, "LCM", [1, 2, 4, 8], 1.0)
                         for path in args.distilled]
    rows = []
    for label, key, sampler, steps_list, cfg in configs:
        for steps in steps_list:
            report = evaluate(models[key], args.data, sampler, steps, cfg, args.limit, None, args.classifier)
            rows.append({"label": label, "model": key, "sampler": sampler, "steps": steps, "cfg_scale": cfg,
                         "top1": report["classifier"]["top1"], "top5": report["classifier"]["top5"],
                         "fid": report["fid"], "images_per_second": 1.0 / report["seconds_per_image_batched"]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    timing = speed(models["base"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emoji-lcm-steps.json").write_text(json.dumps({"quality": rows, "speed": timing}, indent=2) + "\n")
    plot(rows, args.out / "emoji-lcm-steps.png")
    sheet(models, args.out / "emoji-lcm.png")
    print(json.dumps({"quality": rows, "speed": timing}, indent=2))


SHEET_PROMPTS = ["red apple", "grinning face", "dog face", "rocket", "pizza", "ghost", "rainbow", "flag: Japan"]
SHEET_ROWS = [("default, 8 steps", "base", "Euler a", 8, 2.0),
              ("default sampler, 2 steps", "base", "Euler a", 2, 2.0),
              ("--fast (LCM, 2 steps)", "base", "LCM", 2, 1.0), ("LCM, 1 step", "base", "LCM", 1, 1.0)]


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
    speed.set(xscale="log", xlabel="steps", ylabel="images / s (batched, 2-core CPU)",
              title="speed vs steps (during the evaluation)")
    for axis in (quality, speed):
        axis.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.grid(alpha=0.3)
    quality.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
