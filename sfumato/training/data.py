"""Training data: a folder of images with captions.

Captions come from `metadata.jsonl` (Hugging Face imagefolder layout: one JSON object per line with
`file_name` and `text`, where `text` may also be a list of caption variants) or from same-stem `.txt`
files (one caption variant per line). Unreadable images are skipped and counted, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sfumato.errors import InvalidRequest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class Example:
    path: Path
    captions: tuple[str, ...]
    width: int
    height: int


@dataclass
class Dataset:
    root: Path
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # "path: reason" for every unreadable image

    def fingerprint(self) -> str:
        """A hash of file names, sizes, modification times and captions: changes when the data changes."""
        digest = hashlib.sha256()
        for ex in self.examples:
            stat = ex.path.stat()
            digest.update(f"{ex.path.name}|{stat.st_size}|{stat.st_mtime_ns}|{'|'.join(ex.captions)}\n".encode())
        return digest.hexdigest()[:16]


def _read_metadata(root: Path) -> dict[Path, tuple[str, ...]]:
    captions: dict[Path, tuple[str, ...]] = {}
    for number, line in enumerate((root / "metadata.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record.get("text", record.get("caption", ""))
            captions[root / record["file_name"]] = tuple(text) if isinstance(text, list) else (str(text),)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{root / 'metadata.jsonl'} line {number}: {exc}") from None
    return captions


def _txt_captions(path: Path) -> tuple[str, ...]:
    txt = path.with_suffix(".txt")
    if not txt.exists():
        return ("",)
    lines = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(lines) or ("",)


def scan_folder(root: Path) -> Dataset:
    """Find every image under `root` with its captions; unreadable images go to `skipped`."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidRequest(f"training data folder {root} does not exist")
    if (root / "metadata.jsonl").exists():
        listed = _read_metadata(root)
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        listed = {p: _txt_captions(p) for p in files}
    examples, skipped = [], []
    for path, caps in listed.items():
        try:
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            skipped.append(f"{path.name}: {type(exc).__name__}")
            continue
        examples.append(Example(path, caps, width, height))
    if not examples:
        raise InvalidRequest(f"no readable images in {root} ({len(skipped)} skipped)")
    return Dataset(root, examples, skipped)


def load_pixels(path: Path, width: int, height: int, flip: bool = False) -> torch.Tensor:
    """Centre-crop an image to the aspect of `width`×`height`, resize, return [3, H, W] in [-1, 1]."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    target = width / height
    w, h = image.size
    if w / h > target:
        crop = round(h * target)
        image = image.crop(((w - crop) // 2, 0, (w - crop) // 2 + crop, h))
    elif w / h < target:
        crop = round(w / target)
        image = image.crop((0, (h - crop) // 2, w, (h - crop) // 2 + crop))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def shuffle_tags(caption: str, rng: random.Random, keep_first: int = 1) -> str:
    """Shuffle comma-separated tags, keeping the first `keep_first` in place (kohya's keep_tokens)."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    head, tail = tags[:keep_first], tags[keep_first:]
    rng.shuffle(tail)
    return ", ".join(head + tail)
