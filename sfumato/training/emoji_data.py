"""`sfumato data emoji`: render the Noto Color Emoji set into a captioned image folder.

Sources (Debian packages, installable offline from the distribution mirror):
- `fonts-noto-color-emoji`: /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf (Apache-2.0 / OFL-1.1)
- `unicode-data`: /usr/share/unicode/emoji/emoji-test.txt (CLDR names, groups and subgroups)

Writes `OUT/images/NNNN.png` (RGB on white) and `OUT/metadata.jsonl` in the Hugging Face imagefolder
layout, where `text` is a list of caption variants ("red apple", "an emoji of a red apple",
"red apple, food and drink").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from sfumato.errors import InvalidRequest

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_PATH = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT_SIZE = 109  # the only bitmap strike of Noto Color Emoji
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}


@dataclass(frozen=True)
class Emoji:
    codepoints: tuple[int, ...]
    name: str
    group: str
    subgroup: str

    @property
    def text(self) -> str:
        return "".join(chr(c) for c in self.codepoints)

    @property
    def base(self) -> bool:
        """True for emoji without a skin-tone modifier (the 1,870 "base" emoji of Emoji 15.0)."""
        return not SKIN_TONES.intersection(self.codepoints)


def parse_emoji_test(path: Path = EMOJI_TEST_PATH) -> list[Emoji]:
    """Every fully-qualified emoji of `emoji-test.txt`, in file order, with its group and subgroup."""
    if not path.exists():
        raise InvalidRequest(f"{path} not found: install it with `apt-get install unicode-data`")
    emoji: list[Emoji] = []
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            codes, _, comment = line.partition("#")
            name = comment.split(maxsplit=2)[2].strip()  # "# 😀 E1.0 grinning face"
            emoji.append(Emoji(tuple(int(c, 16) for c in codes.split(";")[0].split()), name, group, subgroup))
    return emoji


def captions(emoji: Emoji) -> list[str]:
    """Caption variants: the CLDR name, a sentence, and the name with its group."""
    name = emoji.name
    group = emoji.group.lower().replace("&", "and")
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return [name, f"an emoji of {article} {name}", f"{name}, {group}"]


def render(emoji: Emoji, font: ImageFont.FreeTypeFont, size: int) -> Image.Image:
    """The emoji's colour glyph, centred on white, resized to `size`×`size` RGB."""
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((80, 80), emoji.text, font=font, embedded_color=True, anchor="mm")
    box = canvas.getbbox() or (0, 0, 160, 160)
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    white = Image.new("RGBA", square.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, square).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def load_font(path: Path = FONT_PATH) -> ImageFont.FreeTypeFont:
    if not path.exists():
        raise InvalidRequest(f"{path} not found: install it with `apt-get install fonts-noto-color-emoji`")
    return ImageFont.truetype(str(path), FONT_SIZE)


def build_emoji_dataset(out_dir: Path, size: int = 64, base_only: bool = False, limit: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> int:
    """Render the emoji set into `out_dir`; returns the number of images written."""
    font = load_font()
    selected = [e for e in parse_emoji_test() if e.base or not base_only]
    selected = selected[:limit] if limit else selected
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i, emoji in enumerate(selected):
            file_name = f"images/{i:04d}.png"
            render(emoji, font, size).save(out_dir / file_name)
            record = {"file_name": file_name, "text": captions(emoji), "name": emoji.name, "group": emoji.group,
                      "subgroup": emoji.subgroup, "emoji": emoji.text, "base": emoji.base}
            meta.write(json.dumps(record, ensure_ascii=False) + "\n")
            if progress:
                progress(i + 1, len(selected))
    return len(selected)
