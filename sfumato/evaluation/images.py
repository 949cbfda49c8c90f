"""Image sets for evaluation: folders, pairs matched by file name, frame sequences; clear errors when empty."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sfumato.errors import InvalidRequest, ModelNotFound

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def unit_tensor(images: list[Image.Image], size: int | None = None):
    """RGB images -> float tensor [B, 3, H, W] in [0, 1] (resized to size×size with Lanczos when given)."""
    import numpy as np
    import torch

    if size is not None:
        images = [im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS) for im in images]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"{path}: not a readable image ({exc})") from None


def image_files(folder: Path, what: str = "folder") -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelNotFound(f"{what} {folder} does not exist")
    if not folder.is_dir():
        raise InvalidRequest(f"{what} {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InvalidRequest(f"{what} {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_folder(folder: Path, what: str = "folder") -> list[Image.Image]:
    return [_open(p) for p in image_files(folder, what)]


def load_pairs(a: Path, b: Path) -> list[tuple[str, Image.Image, Image.Image]]:
    """Two images, or two folders matched by file name (every name must exist on both sides)."""
    a, b = Path(a), Path(b)
    for path in (a, b):
        if not path.exists():
            raise ModelNotFound(f"{path} does not exist")
    if a.is_file() and b.is_file():
        return [(a.name, _open(a), _open(b))]
    if a.is_dir() != b.is_dir():
        raise InvalidRequest("compare two images or two folders, not one of each")
    left = {p.name: p for p in image_files(a)}
    right = {p.name: p for p in image_files(b)}
    if left.keys() != right.keys():
        only = sorted(left.keys() ^ right.keys())
        raise InvalidRequest(f"the folders hold different file names ({len(left)} vs {len(right)} images; "
                             f"e.g. {only[0]!r} is on one side only)")
    return [(name, _open(left[name]), _open(right[name])) for name in sorted(left)]


def image_captions(folder: Path, captions_file: Path | None = None) -> list[str]:
    """A caption per image of `folder` (name order): from `captions_file` (one per line), the folder's
    metadata.jsonl, or each PNG's own generation parameters (the prompt)."""
    files = image_files(folder)
    if captions_file is not None:
        lines = [x.strip() for x in Path(captions_file).read_text(encoding="utf-8").splitlines() if x.strip()]
        if len(lines) != len(files):
            raise InvalidRequest(f"{captions_file} has {len(lines)} captions for {len(files)} images")
        return lines
    meta = Path(folder) / "metadata.jsonl"
    if meta.is_file():
        import json

        rows = {r["file_name"]: r for r in map(json.loads, filter(str.strip, meta.read_text().splitlines()))}
        texts = [rows.get(p.name, {}).get("text") for p in files]
        if all(texts):
            return [t[0] if isinstance(t, list) else t for t in texts]
    out = []
    for path in files:
        with Image.open(path) as image:
            text = (getattr(image, "text", {}) or {}).get("parameters")
        if not text:
            raise InvalidRequest(f"{path}: no caption (give --captions FILE, a metadata.jsonl, or sfumato PNGs)")
        from sfumato.output import parse_infotext

        out.append(parse_infotext(text).get("prompt", text.splitlines()[0]))
    return out
