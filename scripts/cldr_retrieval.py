"""CLDR single-emoji retrieval: can the name alone bring back its emoji? For N names of the scenes vocabulary, each
model draws the CLDR name ("red apple") at seed i; the gallery holds every name's sprite in every installed art
style, centred on white as the `emoji` scenes are; a name's score is its best cosine (Open-NSFW features) over its
styles, and the top-1 / top-5 retrieval of the drawn image's own name among the N is reported per model.

    python scripts/cldr_retrieval.py [--names 100] [--model sfumato-scenes --model sfumato-emoji] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image


def _centred(sprite: Image.Image, side: int = 64, size: int = 48) -> Image.Image:
    canvas = Image.new("RGB", (side, side), "white")
    small = sprite.resize((size, size), Image.Resampling.LANCZOS)
    canvas.paste(small, ((side - size) // 2, (side - size) // 2), small)
    return canvas


def main() -> None:
    from sfumato.engine import Engine
    from sfumato.evaluation.features import image_features
    from sfumato.requests import GenerationRequest
    from sfumato.training.emoji_art import Sprites, available_styles
    from sfumato.training.scene_vocab import vocabulary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    objects = random.Random(0).sample(list(vocabulary()), args.names)
    styles = available_styles()
    sprites = Sprites(styles)
    gallery, owner = [], []
    for n, obj in enumerate(objects):
        for style in styles:
            if sprites.has(obj.emoji, style):
                gallery.append(_centred(sprites.full(obj.emoji, style)))
                owner.append(n)
    g = image_features(gallery)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    owner = np.array(owner)
    out = {"names": args.names, "styles": styles}
    for model in args.model or [None]:
        engine = Engine(model=model)
        drawn = [engine.generate(GenerationRequest(obj.emoji.name, seed=i)).images[0].image.convert("RGB")
                 for i, obj in enumerate(objects)]
        q = image_features(drawn)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        sims = q @ g.T
        per_name = np.stack([sims[:, owner == n].max(axis=1) for n in range(len(objects))], axis=1)
        ranks = (per_name > per_name[np.arange(len(objects)), np.arange(len(objects))][:, None]).sum(axis=1)
        out[model or "default"] = {"top1": float((ranks == 0).mean()), "top5": float((ranks < 5).mean())}
        print(model or "default", out[model or "default"], flush=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
