"""The portrait workflow end to end on a synthetic subject, with the embedded model (CPU, a few minutes).

    python scripts/portrait_demo.py [--out docs] [--work /tmp/portrait-demo] [--steps 1500]

"Zorp" — a purple blob with two yellow eyes, drawn at random places on random backgrounds (8 "photos"; the
same drawing as tests/test_portrait.py) — is learnt as a subject LoRA (`train_portrait`: crops, 3 stages, the best
2 merged), then put into three templates made from style prompts by the base model, inpainted in a centre
ellipse: the subject drawn alone with its LoRA is pasted in (face fusion), inpainted at strength 0.8 under the
shipped canny ControlNet (acting outside the ellipse only) and polished (`generate_portrait`). Writes
OUT/portrait-demo.png (row 1: the photos; rows 2-4: template | mask | fused | inpainted | final, per style) and
OUT/portrait-demo.json (with the identity score of each column against the photos' crops).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfumato.models.embedded import embedded_model  # noqa: E402
from sfumato.portrait.synthetic import synthetic_photo  # noqa: E402
from sfumato.evaluation.features import load_extractor  # noqa: E402
from sfumato.portrait.workflow import (PortraitSettings, generate_portrait, identity_similarity,  # noqa: E402
                                       train_portrait)

STYLES = ["sunrise over mountains", "house with garden", "ocean wave"]
CELL = 96


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/portrait-demo"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--reuse", action="store_true", help="keep WORK/run from an earlier run (no training)")
    parser.add_argument("--strength", type=float, default=0.8, help="inpainting strength of the face region")
    parser.add_argument("--polish-strength", type=float, default=0.15, help="the whole-image pass")
    args = parser.parse_args()
    model = embedded_model()
    photos = args.work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    pictures = [synthetic_photo(seed) for seed in range(8)]
    for seed, picture in enumerate(pictures):
        picture.save(photos / f"zorp-{seed}.png")
    settings = PortraitSettings(subject="zorp blob", steps=args.steps, stages=3, keep=2, rank=16, batch_size=4,
                                learning_rate=1e-3, samples=4)
    if args.reuse and (args.work / "run" / "portrait.json").exists():
        record = json.loads((args.work / "run" / "portrait.json").read_text())
    else:
        record = train_portrait(photos, args.work / "run", model, settings, say=print)
    size = record["resolution"]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((size // 4, size // 8, size * 3 // 4, size * 5 // 8), fill=255)
    mask.save(args.work / "mask.png")
    rows = []
    for index, style in enumerate(STYLES):
        result = generate_portrait(args.work / "run", style=style, mask=args.work / "mask.png", seed=index,
                                   work=args.work / f"style-{index}", strength=args.strength,
                                   polish_strength=args.polish_strength)
        rows.append([result.template, result.mask.convert("RGB"), result.fused, result.inpainted, result.final])
    columns = max(len(pictures), 5)
    sheet = Image.new("RGB", (columns * CELL, (1 + len(rows)) * CELL), "white")
    for i, picture in enumerate(pictures):
        sheet.paste(picture.resize((CELL, CELL * 80 // 96)), (i * CELL, 0))
    for r, row in enumerate(rows, start=1):
        for c, picture in enumerate(row):
            sheet.paste(picture.resize((CELL, CELL), Image.NEAREST), (c * CELL, r * CELL))
    args.out.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out / "portrait-demo.png")
    extractor = load_extractor(record["settings"]["extractor"])
    crops = [Image.open(p).convert("RGB") for p in sorted((args.work / "run" / "data").glob("*.png"))]
    identity = {name: round(identity_similarity(extractor, [row[k] for row in rows], crops), 5)
                for name, k in (("templates", 0), ("fused", 2), ("inpainted", 3), ("final", 4))}
    (args.out / "portrait-demo.json").write_text(json.dumps({"styles": STYLES, "identity_of_columns": identity,
                                                            **record}, indent=2) + "\n")
    print(f"{args.out / 'portrait-demo.png'}: identity {record['identity_merged']:.4f} with the subject LoRA, "
          f"{record['identity_without_lora']:.4f} without; columns {identity}")


if __name__ == "__main__":
    main()
