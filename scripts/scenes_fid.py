"""FID of a scenes model against held-out renders: each of N held-out scenes (`sfumato data scenes --held-out`) is
generated from its first caption at its canvas size; features are Open-NSFW's (offline; `sfumato eval fid`'s
default). The floor is the FID between the first and second halves of the references (N/2 each: the same world,
other scenes); the model row uses the first half as its references.

    python scripts/scenes_fid.py HELD_OUT_DATA [--count 1000] [--model M ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image


def main() -> None:
    from sfumato.engine import Engine
    from sfumato.evaluation.features import image_features
    from sfumato.evaluation.metrics import frechet_distance
    from sfumato.requests import GenerationRequest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--model", action="append", default=[], help="models to score (default: the default one)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.data / "metadata.jsonl").read_text().splitlines()][:args.count]
    half = len(records) // 2
    real = [Image.open(args.data / r["file_name"]).convert("RGB") for r in records]
    first, second = image_features(real[:half]), image_features(real[half:])
    rows = {"renders (second half)": frechet_distance(first, second)}
    for model in args.model or [None]:
        engine = Engine(model=model)
        fake = []
        for i, r in enumerate(records[:half]):
            request = GenerationRequest(r["text"][0], seed=i, width=r["width"], height=r["height"], steps=args.steps)
            fake.append(engine.generate(request).images[0].image)
        rows[model or "default"] = frechet_distance(first, image_features(fake))
        print(f"{model or 'default'}: FID {rows[model or 'default']:.1f}", flush=True)
    print(json.dumps({"references": half, "fid": rows}, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"references": half, "fid": rows}, indent=2))


if __name__ == "__main__":
    main()
