"""Uploaded images (base64 or multipart): capped in bytes and pixels, images only, stored re-encoded as PNG."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sfumato.errors import InvalidRequest
from sfumato.server.settings import Limits

FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF"}


class UploadTooLarge(InvalidRequest):
    http_status = 413


def decode_base64(text: str, limits: Limits, what: str = "image") -> bytes:
    """Bytes of a base64 image (a `data:image/...;base64,` prefix is allowed)."""
    if not isinstance(text, str) or not text:
        raise InvalidRequest(f"{what} must be a non-empty base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limits.max_upload_bytes * 4 // 3 + 4:
        raise UploadTooLarge(f"{what} is larger than {limits.max_upload_bytes // 2**20} MiB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{what} is not valid base64") from None


def open_image(data: bytes, limits: Limits, what: str = "image") -> Image.Image:
    """Decode an uploaded image after checking its size in bytes and pixels (decompression bombs refused)."""
    if len(data) > limits.max_upload_bytes:
        raise UploadTooLarge(f"{what} is larger than {limits.max_upload_bytes // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise InvalidRequest(f"{what}: unsupported format {image.format} (use PNG, JPEG or WebP)")
            width, height = image.size
            if width * height > limits.max_upload_pixels:
                raise UploadTooLarge(f"{what} has {width}x{height} pixels; at most {limits.max_upload_pixels} allowed")
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise InvalidRequest(f"{what} is not a readable image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UploadTooLarge(f"{what} is a decompression bomb (too many pixels)") from None
    return image


def store_image(image: Image.Image, folder: Path) -> str:
    """Save as RGB PNG under `folder`, named by content hash; return the path (only the server uses it)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return store_bytes(buffer.getvalue(), folder, ".png")


def store_bytes(data: bytes, folder: Path, suffix: str) -> str:
    """Write `data` under `folder` named by its content hash (atomically, once); return the path."""
    path = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


def alpha_to_mask(image: Image.Image, invert: bool = False) -> Image.Image:
    """OpenAI edit masks: fully transparent pixels are the ones to edit -> white (repaint) on black."""
    alpha = image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    return mask.point(lambda v: 255 - v) if invert else mask


def png_base64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()
