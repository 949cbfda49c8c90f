"""The pictures and numbers of docs/consistency.md, from the embedded model (or --model):

    python scripts/consistency_figures.py [--model PATH] [--out docs]

1. reference-only: no prompt, a cat as the reference; each seed plain and with reference_only / reference_adain /
   reference_adain+attn ("ControlNet is more important"); mean absolute pixel distance to the reference.
2. consistent batches: four images per prompt, three seeds, strength 0 / 1 / 2; mean pairwise feature cosine
   (sfumato.views.consistency) and mean pixel distance to the batch's first image.
3. a view sheet: `sfumato views "a red robot"` with and without sharing.
Prints Markdown tables; writes consistency-reference.png, consistency-batch.png, consistency-views.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfumato.engine import Engine  # noqa: E402
from sfumato.evaluation.features import load_extractor  # noqa: E402
from sfumato.evaluation.grid import Axis, draw_grid  # noqa: E402
from sfumato.requests import GenerationRequest  # noqa: E402
from sfumato.views import consistency, views_request  # noqa: E402

MODULES = ("reference_only", "reference_adain", "reference_adain+attn")


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    engine = Engine(args.model) if args.model else Engine()
    extractor = load_extractor()

    def image(prompt: str, seed: int, **fields) -> Image.Image:
        return engine.generate(GenerationRequest(prompt=prompt, seed=seed, **fields)).images[0].image

    with tempfile.TemporaryDirectory() as temp:
        cat = image("a cat", 1)
        cat_path = Path(temp) / "cat.png"
        cat.save(cat_path)
        rows, table = [], []
        for seed in (1, 2, 3):
            plain = image("", seed)
            row, cells = [plain], [f"{distance(plain, cat):.1f}"]
            for module in MODULES:
                steered = image("", seed, controls=[{"image": str(cat_path), "module": module,
                                                     "control_mode": "control"}])
                row.append(steered)
                cells.append(f"{distance(steered, cat):.1f}")
            rows.append(row)
            table.append(f"| {seed} | " + " | ".join(cells) + " |")
    labels = ["no unit", *MODULES]
    draw_grid([rows], [Axis("unit", labels, labels), Axis("seed", [1, 2, 3], ["seed 1", "seed 2", "seed 3"])]) \
        .save(args.out / "consistency-reference.png")
    print("Reference: a cat (`a cat`, seed 1), no prompt, 'ControlNet is more important'; mean |pixel - reference|:\n")
    print("| seed | no unit | " + " | ".join(MODULES) + " |\n|---|---|---|---|---|")
    print("\n".join(table))

    print("\nConsistent batches (4 images, seeds 10/20/30): mean pairwise feature cosine / mean pixel distance to "
          "the first image:\n")
    print("| prompt | strength 0 (plain) | 1 | 2 |\n|---|---|---|---|")
    batches = []
    for prompt in ("", "a thing", "a robot"):
        cells = []
        for strength in (0.0, 1.0, 2.0):
            scores, pixels = [], []
            for seed in (10, 20, 30):
                images = [item.image for item in engine.generate(GenerationRequest(
                    prompt=prompt, seed=seed, batch_size=4, consistent=strength)).images]
                scores.append(consistency(images, extractor))
                pixels.append(np.mean([distance(other, images[0]) for other in images[1:]]))
                if seed == 10 and prompt == "":
                    batches.append(images)
            cells.append(f"{np.mean(scores):.3f} / {np.mean(pixels):.1f}")
        print(f"| {prompt or '(none)'} | " + " | ".join(cells) + " |")
    draw_grid([batches], [Axis("image", [1, 2, 3, 4], ["1 (first)", "2", "3", "4"]),
                          Axis("consistent", [0, 1, 2], ["plain", "consistent 1", "consistent 2"])]) \
        .save(args.out / "consistency-batch.png")

    views = ["front", "side", "back"]
    sheets = []
    print("\nView sheet `a red robot` (seeds 1-3): mean pairwise feature cosine, plain vs shared:\n")
    print("| seed | plain | consistent 1 |\n|---|---|---|")
    for seed in (1, 2, 3):
        cells = []
        for strength in (0.0, 1.0):
            result = engine.generate(views_request(GenerationRequest(prompt="a red robot", seed=seed), views,
                                                   consistent=strength))
            images = [item.image for item in result.images]
            cells.append(f"{consistency(images, extractor):.3f}")
            if seed == 1:
                sheets.append(images)
        print(f"| {seed} | " + " | ".join(cells) + " |")
    draw_grid([sheets], [Axis("view", views, views), Axis("sharing", [0, 1], ["plain", "consistent"])]) \
        .save(args.out / "consistency-views.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
