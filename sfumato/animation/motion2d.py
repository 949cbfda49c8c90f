"""Deforum-style 2D motion between loopback frames (zoom, rotate, pan) and colour coherence."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def move(image: Image.Image, zoom: float = 1.0, angle: float = 0.0, dx: float = 0.0, dy: float = 0.0) -> Image.Image:
    """Zoom by `zoom` and rotate by `angle` degrees (counter-clockwise) about the centre, then shift by (dx, dy)
    pixels; the borders that come into view repeat the edge (reflected). The identity returns the image itself."""
    if zoom == 1.0 and angle == 0.0 and dx == 0.0 and dy == 0.0:
        return image
    array = np.asarray(image.convert("RGB"))
    height, width = array.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, zoom)
    matrix[:, 2] += (dx, dy)
    moved = cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LANCZOS4,
                           borderMode=cv2.BORDER_REFLECT_101)
    return Image.fromarray(moved)


def match_colors(image: Image.Image, reference: Image.Image) -> Image.Image:
    """Histogram matching per RGB channel: `image`'s colours take `reference`'s distribution (loopback frames keep
    the first frame's palette instead of drifting). An image matched to itself is returned unchanged."""
    source, target = np.asarray(image.convert("RGB")), np.asarray(reference.convert("RGB"))
    out = np.empty_like(source)
    for channel in range(3):
        out[..., channel] = _match_channel(source[..., channel], target[..., channel])
    return Image.fromarray(out)


def _match_channel(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    values, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    target_values, target_counts = np.unique(target.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    target_quantiles = np.cumsum(target_counts) / target.size
    mapped = np.interp(quantiles, target_quantiles, target_values)
    return np.round(mapped).astype(np.uint8)[inverse].reshape(source.shape)
