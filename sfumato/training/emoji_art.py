"""Emoji art in several styles, as RGBA sprites: the sources of `sfumato data scenes`.

| style | source | files | licence |
|---|---|---|---|
| `noto` | Debian `fonts-noto-color-emoji` 2.042, the colour font (rendered by Pillow) | one font | images Apache-2.0, font OFL-1.1 |
| `flat` | npm `emoji-datasource-twitter` 16.0.0 (Twemoji 15, by jdecked) | `img/twitter/64/<codepoints>.png` | graphics CC-BY-4.0, code MIT |
| `3d` | npm `@lobehub/fluent-emoji-3d` 1.1.0 (Microsoft Fluent Emoji 3D) | `assets/<codepoints>.webp`, 256 px | MIT |

The npm packages are found under `$SFUMATO_HOME/emoji-art/node_modules` or `./node_modules`; install them with
`npm install --prefix ~/.sfumato/emoji-art emoji-datasource-twitter@16.0.0 @lobehub/fluent-emoji-3d@1.1.0`.
A style whose files are missing is simply not available (`available_styles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw

from sfumato.models import home
from sfumato.training.emoji_data import Emoji, load_font


@dataclass(frozen=True)
class Style:
    name: str  # the word a caption uses ("" for the default style)
    package: str | None  # npm package, None for the Noto font
    folder: str  # inside the package
    suffix: str
    licence: str


STYLES = {
    "noto": Style("", None, "", "", "Noto Color Emoji 2.042: images Apache-2.0, font OFL-1.1"),
    "flat": Style("flat", "emoji-datasource-twitter", "img/twitter/64", ".png",
                  "Twemoji 15 via emoji-datasource-twitter 16.0.0: graphics CC-BY-4.0 (jdecked/twemoji), code MIT"),
    "3d": Style("3d", "@lobehub/fluent-emoji-3d", "assets", ".webp",
                "Microsoft Fluent Emoji 3D via @lobehub/fluent-emoji-3d 1.1.0: MIT"),
}


def art_roots() -> list[Path]:
    return [home.home() / "emoji-art" / "node_modules", Path("node_modules")]


def style_folder(style: str, roots: list[Path] | None = None) -> Path | None:
    spec = STYLES[style]
    for root in roots or art_roots():
        folder = Path(root) / spec.package / spec.folder
        if folder.is_dir():
            return folder
    return None


def available_styles(roots: list[Path] | None = None) -> list[str]:
    """The styles whose art is installed (`noto` needs only the Debian font)."""
    from sfumato.training.emoji_data import FONT_PATH

    found = ["noto"] if FONT_PATH.exists() else []
    return found + [s for s in STYLES if s != "noto" and style_folder(s, roots) is not None]


def _file(folder: Path, emoji: Emoji, suffix: str) -> Path | None:
    """`1f34e.png`; with or without the variation selector FE0F, as each package spells it."""
    for drop in (False, True):
        codes = [c for c in emoji.codepoints if not (drop and c == 0xFE0F)]
        path = folder / ("-".join(f"{c:x}" for c in codes) + suffix)
        if path.exists():
            return path
    return None


def _trim(image: Image.Image) -> Image.Image:
    """Crop to the opaque pixels and pad to a square, transparent around."""
    image = image.convert("RGBA")
    box = image.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox() or (0, 0, *image.size)
    glyph = image.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square


class Sprites:
    """Square, trimmed RGBA sprites of emoji per style, resized on demand and cached."""

    def __init__(self, styles: list[str], roots: list[Path] | None = None):
        self.styles = styles
        self.folders = {s: style_folder(s, roots) for s in styles if s != "noto"}
        self.font = load_font() if "noto" in styles else None

    def has(self, emoji: Emoji, style: str) -> bool:
        if style == "noto":
            return self.font is not None
        return _file(self.folders[style], emoji, STYLES[style].suffix) is not None

    @lru_cache(maxsize=4096)
    def full(self, emoji: Emoji, style: str) -> Image.Image:
        if style == "noto":
            canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((80, 80), emoji.text, font=self.font, embedded_color=True, anchor="mm")
            return _trim(canvas)
        path = _file(self.folders[style], emoji, STYLES[style].suffix)
        with Image.open(path) as image:
            return _trim(image)

    @lru_cache(maxsize=16384)
    def sized(self, emoji: Emoji, style: str, side: int) -> Image.Image:
        return self.full(emoji, style).resize((side, side), Image.Resampling.LANCZOS)
