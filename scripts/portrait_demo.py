"""The portrait workflow end to end on a synthetic subject, with the embedded model (CPU, a few minutes).

    python scripts/portrait_demo.py [--out docs] [--work /tmp/portrait-demo] [--steps 300]

"Zorp" — a purple blob with two yellow eyes, drawn at random places on random backgrounds (8 "photos"; the
same drawing as tests/test_portrait.py) — is learnt as a subject LoRA (`train_portrait`: crops, 3 stages, the best
2 merged), then put into three templates made from style prompts by the base model, inpainted in a centre
ellipse under the shipped canny ControlNet and polished (`generate_portrait`). Writes OUT/portrait-demo.png
(row 1: the photos; rows 2-4: template | mask | inpainted | final, per style) and OUT/portrait-demo.json.
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
from sfumato.portrait.workflow import PortraitSettings, generate_portrait, train_portrait  # noqa: E402

STYLES = ["sunrise over mountains", "house with garden", "ocean wave"]
CELL = 96


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/portrait-demo"))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    model = embedded_model()
    photos = args.work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    pictures = [synthetic_photo(seed) for seed in range(8)]
    for seed, picture in enumerate(pictures):
        picture.save(photos / f"zorp-{seed}.png")
    settings = PortraitSettings(subject="zorp blob", steps=args.steps, stages=3, keep=2, rank=8, batch_size=4,
                                learning_rate=5e-4, samples=4)
    record = train_portrait(photos, args.work / "run", model, settings, say=print)
    size = record["resolution"]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((size // 4, size // 8, size * 3 // 4, size * 5 // 8), fill=255)
    mask.save(args.work / "mask.png")
    rows = []
    for index, style in enumerate(STYLES):
        result = generate_portrait(args.work / "run", style=style, mask=args.work / "mask.png", seed=index,
                                   work=args.work / f"style-{index}")
        rows.append([result.template, result.mask.convert("RGB"), result.inpainted, result.final])
    columns = max(len(pictures), 4)
    sheet = Image.new("RGB", (columns * CELL, (1 + len(rows)) * CELL), "white")
    for i, picture in enumerate(pictures):
        sheet.paste(picture.resize((CELL, CELL * 80 // 96)), (i * CELL, 0))
    for r, row in enumerate(rows, start=1):
        for c, picture in enumerate(row):
            sheet.paste(picture.resize((CELL, CELL), Image.NEAREST), (c * CELL, r * CELL))
    args.out.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out / "portrait-demo.png")
    (args.out / "portrait-demo.json").write_text(json.dumps({"styles": STYLES, **record}, indent=2) + "\n")
    print(f"{args.out / 'portrait-demo.png'}: identity {record['identity_merged']:.4f} with the subject LoRA, "
          f"{record['identity_without_lora']:.4f} without")


if __name__ == "__main__":
    main()
