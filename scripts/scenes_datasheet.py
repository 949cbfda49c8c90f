"""Samples and counts of a `sfumato data scenes` folder, for the datasheet in docs/scenes.md.

    python scripts/scenes_datasheet.py DATA [--figure docs/scenes-samples.png] [--markdown]

Draws the first scenes of each kind with their first caption under them, and prints the datasheet's counts as
Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def figure(data: Path, out: Path, per_kind: int = 6, cell: int = 128) -> Path:
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    kinds = ["emoji", "single", "count", "pair", "group"]
    rows = [[r for r in records if r["kind"] == k][:per_kind] for k in kinds]
    caption_h = 44
    sheet = Image.new("RGB", (per_kind * (cell + 8) + 8, len(kinds) * (cell + caption_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for y, row in enumerate(rows):
        for x, r in enumerate(row):
            image = Image.open(data / r["file_name"]).convert("RGB")
            scale = cell / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
            left, top = 8 + x * (cell + 8), 8 + y * (cell + caption_h + 8)
            draw.rectangle([left - 1, top - 1, left + cell, top + cell], outline=(200, 200, 200))
            sheet.paste(image, (left + (cell - image.width) // 2, top + (cell - image.height) // 2))
            text = "\n".join(textwrap.wrap(r["text"][0], 24)[:3])
            draw.multiline_text((left, top + cell + 2), text, fill=(40, 40, 40), font=font, spacing=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def markdown(data: Path) -> str:
    sheet = json.loads((data / "datasheet.json").read_text(encoding="utf-8"))
    lines = []
    for key in ("kinds", "canvases", "objects per image", "categories", "relations", "backgrounds"):
        values = sheet[key]
        lines += [f"| {key} | count |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(values.items(), key=lambda kv: -kv[1])]
        lines.append("")
    lines += ["| style | images | licence |", "|---|---|---|"]
    lines += [f"| {s} | {v['count']:,} | {v['licence']} |" for s, v in sheet["styles"].items()]
    held = sheet["held out"]
    lines += ["", f"Held out: {held['object pairs']:,} of {held['of pairs']:,} object pairs, "
              f"{held['colour-object pairs']:,} colour-object pairs, {held['count-object pairs']:,} count-object pairs."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--figure", type=Path, default=Path("docs/scenes-samples.png"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(figure(args.data, args.figure))
    if args.markdown:
        print(markdown(args.data))


if __name__ == "__main__":
    main()
