"""Before/after pictures of the upscalers and image recipes, with the embedded emoji model (no download).

    python scripts/recipes_demo.py [--out docs]

Writes docs/upscale.png (a Noto emoji shrunk to 34 px, then 4x back: nearest, Lanczos, R-ESRGAN 4x+,
R-ESRGAN 4x+ Anime6B, next to the original) and docs/recipes.png (colorize, restore, style, each as
input | result) and a generated emoji upscaled. Needs Debian's fonts-noto-color-emoji for the upscale figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfumato.engine import Engine  # noqa: E402
from sfumato.pipelines.upscaling import grayscale  # noqa: E402
from sfumato.requests import GenerationRequest, UpscaleRequest  # noqa: E402

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CELL = 192


def emoji(char: str) -> Image.Image:
    font = ImageFont.truetype(FONT, 109)  # the font's one bitmap size
    canvas = Image.new("RGB", (136, 128), "white")
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    return canvas.crop((0, 0, 136, 128)).resize((136, 136))


def labelled(pictures: list[tuple[str, Image.Image]], title: str) -> Image.Image:
    sheet = Image.new("RGB", (CELL * len(pictures), CELL + 44), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, picture) in enumerate(pictures):
        sheet.paste(picture.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (i * CELL, 36))
        draw.text((i * CELL + 6, 20), label, fill="black")
    draw.text((6, 3), title, fill="black")
    return sheet


def stack(rows: list[Image.Image]) -> Image.Image:
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        out.paste(row, (0, y))
        y += row.height
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine = Engine()
    tmp = Path(tempfile.mkdtemp())

    rows = []
    for char in ("🍎", "🦊"):
        original = emoji(char)
        small = original.resize((34, 34), Image.Resampling.LANCZOS)
        rows.append(labelled([("34 px input", small)] + [
            (name, engine.upscale(small, UpscaleRequest(name, 4.0)))
            for name in ("Nearest", "Lanczos", "R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B")] + [("original 136 px", original)],
            "sfumato upscale --upscaler NAME --scale 4   (a Noto Color Emoji glyph shrunk to 34 px)"))
    stack(rows).save(args.out / "upscale.png")

    photo = engine.generate(GenerationRequest("red apple", seed=7, steps=20)).images[0].image
    photo.save(tmp / "apple.png")
    gray = grayscale(photo)
    gray.save(tmp / "gray.png")
    colored = engine.generate(engine.recipe("colorize", str(tmp / "gray.png"), prompt="green apple", seed=3)).images[0]
    rng = np.random.default_rng(0)
    damaged = np.asarray(photo.filter(ImageFilter.GaussianBlur(0.8)), np.float32) + rng.normal(0, 18, (32, 32, 3))
    damaged = Image.fromarray(damaged.clip(0, 255).astype(np.uint8))
    ImageDraw.Draw(damaged).line((3, 22, 29, 9), fill=(250, 250, 250), width=1)
    damaged.save(tmp / "damaged.png")
    scratch = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(scratch).line((3, 22, 29, 9), fill=255, width=3)
    scratch.save(tmp / "scratch.png")
    restored = engine.generate(engine.recipe("restore", str(tmp / "damaged.png"), prompt="red apple",
                                             mask=str(tmp / "scratch.png"), mask_blur=2, seed=3)).images[0]
    styled = engine.generate(engine.recipe("style", str(tmp / "apple.png"), prompt="tangerine", seed=3)).images[0]
    upscaled = {name: engine.upscale(photo, UpscaleRequest(name, 4.0)) for name in ("Lanczos", "R-ESRGAN 4x+")}
    sheet = stack([
        labelled([("colour photo", photo), ("gray input", gray), ("colorize 'green apple'", colored.image)],
                 "sfumato colorize gray.png -p 'green apple'   (L kept exactly, colours from the model)"),
        labelled([("damaged input", damaged), ("scratch mask", scratch.convert("RGB")), ("restore", restored.image)],
                 "sfumato restore damaged.png --mask scratch.png -p 'red apple'"),
        labelled([("input", photo), ("style 'tangerine'", styled.image)],
                 "sfumato style apple.png -p tangerine   (edges kept by sfumato-emoji-canny)"),
        labelled([("generated, 32 px", photo)] + [(f"x4, {name}", image) for name, image in upscaled.items()],
                 "sfumato upscale apple.png --upscaler NAME --scale 4"),
    ])
    sheet.save(args.out / "recipes.png")
    print(f"wrote {args.out / 'upscale.png'} and {args.out / 'recipes.png'}")


if __name__ == "__main__":
    main()
