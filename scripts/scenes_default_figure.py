"""The README's picture of the default model: eight seeds of each prompt, one row per prompt, shown at 2x.

    python scripts/scenes_default_figure.py [--out docs/scenes-default.png] [--model sfumato-scenes]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

PROMPTS = ["a blue car on a yellow background", "a red apple on the left", "a red apple on the right",
           "a small red apple", "three oranges", "a cat to the left of a dog"]


def main() -> None:
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/scenes-default.png"))
    parser.add_argument("--model")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    engine = Engine(model=args.model)
    side, label = 128, 240
    sheet = Image.new("RGB", (label + 8 * side, len(PROMPTS) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for row, prompt in enumerate(PROMPTS):
        images = engine.generate(GenerationRequest(prompt, seed=args.seed, batch_size=8)).images
        draw.text((8, row * side + side // 2 - 6), prompt, fill="black")
        for column, item in enumerate(images):
            sheet.paste(item.image.resize((side, side), Image.Resampling.NEAREST), (label + column * side, row * side))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
