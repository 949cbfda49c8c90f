"""Input images and masks: loading, resizing, blurring, outpaint canvases."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from sfumato.errors import InvalidRequest, ModelNotFound
from sfumato.limits import LOCAL, OverBudget, check_pixels


@contextlib.contextmanager
def _opened(source: str, what: str, max_pixels: int) -> Iterator[Image.Image]:
    """An image file opened (header read, pixels not yet decoded) once its size is within `max_pixels`; unreadable
    files and decompression bombs become one clear error."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"{what} {source} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget decides
            with Image.open(path) as image:
                check_pixels(*image.size, max_pixels, what, OverBudget)
                yield image
    except Image.DecompressionBombError:
        raise OverBudget(f"{what} {source} has more pixels than the decoder allows (a decompression bomb?); at "
                         f"most {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"{what} {source} is not a readable image ({exc})") from None


def load_image(source: str | Image.Image, what: str = "image", max_pixels: int = LOCAL.max_upload_pixels) -> Image.Image:
    """An image file, decoded only when its header's size is within `max_pixels` (the pixel budget)."""
    if isinstance(source, Image.Image):
        return source
    with _opened(source, what, max_pixels) as image:
        image.load()
        return image.copy()


def image_size(source: str, what: str = "image", max_pixels: int = LOCAL.max_upload_pixels) -> tuple[int, int]:
    """An image file's size from its header, checked like `load_image` but not decoded (resolving a request only
    needs sizes; the pixels are decoded once, when the image is used)."""
    with _opened(source, what, max_pixels) as image:
        return image.size


def fit(image: Image.Image, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A1111's "just resize": scale to exactly width x height."""
    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def prepare_mask(mask: Image.Image, width: int, height: int, blur: int) -> Image.Image:
    """Greyscale mask (white = repaint) at the output size, Gaussian-blurred by `blur` pixels."""
    if mask.mode in ("RGBA", "LA"):  # painted masks: use alpha where the editor left colours untouched
        alpha = np.asarray(mask.getchannel("A"))
        if alpha.min() < 255:
            mask = Image.fromarray(255 - alpha)
    mask = fit(mask, width, height, "L")
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Paint over the masked area from its surroundings (OpenCV's Telea inpainting): A1111's "fill" masked content,
    so an img2img at low strength starts from plausible pixels, not from the scratch itself."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    hole = (np.asarray(mask.convert("L")) >= 64).astype(np.uint8) * 255
    return Image.fromarray(cv2.inpaint(rgb, hole, 3, cv2.INPAINT_TELEA))


def outpaint_canvas(image: Image.Image, pads: dict[str, int]) -> tuple[Image.Image, Image.Image]:
    """Pad `image` by pixels per side, filling with stretched edges; the mask is white where new."""
    left, right, up, down = (pads.get(side, 0) for side in ("left", "right", "up", "down"))
    array = np.asarray(image.convert("RGB"))
    canvas = np.pad(array, ((up, down), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[up: up + array.shape[0], left: left + array.shape[1]] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)


def overlay(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the original pixels where the mask is black (A1111's inpaint overlay)."""
    return Image.composite(generated, original.convert("RGB"), mask.convert("L"))
