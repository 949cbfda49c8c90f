"""What each speed lever costs in quality, on the embedded model, side by side in one run.

    python scripts/speed_quality.py --data EMOJI_DATA --classifier CLASSIFIER.safetensors [--limit 468] [--out docs]

For each setting (the defaults — Euler a, 8 steps, CFG 2 — then step caching at several intervals/branches, token
merging, bfloat16), one image per emoji name (seed = its index) is generated in batches. Reported: images/s,
reference PSNR / SSIM of each image against the default setting's image of the same seed (`sfumato eval steps`'s
reference metrics), and adherence: the reference classifier's top-1 retrieval of the named emoji among all renders
(`scripts/emoji_quality.py`). Writes OUT/speed-quality.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emoji_quality import _retrieval, classifier_extractor, load_reference  # noqa: E402

from sfumato.engine import Engine  # noqa: E402
from sfumato.evaluation.metrics import psnr, ssim  # noqa: E402
from sfumato.models.embedded import EMBEDDED_DIR  # noqa: E402
from sfumato.requests import GenerationRequest  # noqa: E402

SETTINGS = [  # (label, request fields, engine: a key of ENGINES)
    ("default (Euler a, 8 steps, CFG 2)", {}, None),
    ("step cache: interval 2, branch 0", {"cache_interval": 2}, None),
    ("step cache: interval 2, branch 1", {"cache_interval": 2, "cache_branch": 1}, None),
    ("step cache: interval 3, branch 0", {"cache_interval": 3}, None),
    ("step cache: interval 4, branch 0", {"cache_interval": 4}, None),
    ("token merging 0.3", {"token_merging_ratio": 0.3}, None),
    ("token merging 0.5", {"token_merging_ratio": 0.5}, None),
    ("bfloat16", {}, "bfloat16"),
    ("int8 weights", {}, "int8"),
    ("fp8 weights", {}, "fp8"),
]
ENGINES = {None: {}, "bfloat16": {"dtype": "bfloat16"}, "int8": {"quantize": "int8"}, "fp8": {"quantize": "fp8"}}


def generate(engine: Engine, names: list[str], seeds: list[int], fields: dict, batch: int = 128):
    images = []
    for start in range(0, len(names), batch):
        requests = [GenerationRequest(prompt=n, seed=s, **fields) for n, s in
                    zip(names[start:start + batch], seeds[start:start + batch])]
        images.extend(r.images[0].image.convert("RGB") for r in engine.generate_many(requests))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=468)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--only", help="comma-separated setting labels to run besides the default (e.g. 'int8 "
                                       "weights,fp8 weights'); writes speed-quality-only.json")
    args = parser.parse_args()
    from sfumato.memory import memory_settings

    settings = [row for k, row in enumerate(SETTINGS) if k == 0 or not args.only or row[0] in args.only.split(",")]
    engines = {key: Engine(str(EMBEDDED_DIR), dtype=spec.get("dtype"), memory=memory_settings(
        quantize=spec.get("quantize"))) for key, spec in ENGINES.items() if any(row[2] == key for row in settings)}
    info = engines[None].describe()
    names, real = load_reference(args.data, info.native_size)
    chosen = list(range(len(names)))[:: max(1, len(names) // args.limit)]
    prompts = [names[i] for i in chosen]
    extractor = classifier_extractor(args.classifier, real, info.native_size)
    for engine in engines.values():
        generate(engine, prompts[:8], chosen[:8], {})  # warm-up
    rows, reference = [], None
    for label, fields, key in settings:
        start = time.perf_counter()
        images = generate(engines[key], prompts, chosen, fields)
        seconds = time.perf_counter() - start
        reference = reference or images
        ranks, _, _ = _retrieval(extractor, real, None, {"names": (images, chosen)})
        pairs = list(zip(images, reference))
        rows.append({"setting": label, "fields": fields, "engine": ENGINES[key] or "float32",
                     "images_per_s": len(images) / seconds,
                     "ref_psnr_db": float(np.median([psnr(a, b) for a, b in pairs])) if images is not reference
                     else None,
                     "ref_ssim": float(np.mean([ssim(a, b) for a, b in pairs])),
                     "top1": float((ranks["names"] == 0).mean())})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]["images_per_s"]
    print(f"embedded model, {len(chosen)} names, batches of 128, {extractor.name} top-1")
    print(f"  {'setting':36s} {'img/s':>7s} {'speed-up':>8s} {'ref PSNR':>9s} {'ref SSIM':>8s} {'top-1':>6s}")
    for r in rows:
        ref = "—" if r["ref_psnr_db"] is None else f"{r['ref_psnr_db']:.1f}"
        print(f"  {r['setting']:36s} {r['images_per_s']:7.1f} {r['images_per_s'] / base:7.2f}x {ref:>9s} "
              f"{r['ref_ssim']:8.3f} {r['top1']:6.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    name = "speed-quality-only.json" if args.only else "speed-quality.json"
    (args.out / name).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
