"""Pixel upscalers inside generation: hires fix with an upscaler, SD upscale (tiled img2img over an upscaled
image, overlaps blended), restoring an init image through an upscaler, and colourising with Lab luminance kept."""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from sfumato.requests import GenerationRequest
from sfumato.upscale import Upscaler, upscale
from sfumato.upscale.tiling import run_tiled
from sfumato.upscale.upscalers import to_image, to_tensor

UpscalerFor = Callable[[str], Upscaler]


def sd_upscale_size(request: GenerationRequest) -> tuple[int, int]:
    """The SD upscale output size: the request's size times `sd_upscale`, in multiples of 8."""
    return (int(round(request.width * request.sd_upscale / 8)) * 8,
            int(round(request.height * request.sd_upscale / 8)) * 8)


def sd_upscale(request: GenerationRequest, image: Image.Image, upscaler: Upscaler,
               refine: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """A1111's SD upscale: `image` upscaled by `sd_upscale`, then each tile (of the request's size) replaced by
    `refine(tile)` — an img2img pass — with neighbours overlapping by `sd_upscale_overlap` px and blended with linear
    ramps, so no seam shows."""
    width, height = sd_upscale_size(request)
    big = upscale(image, upscaler, width, height)
    overlap = min(request.sd_upscale_overlap, request.width - 8, request.height - 8)
    return to_image(run_tiled(lambda tile: to_tensor(refine(to_image(tile))), to_tensor(big), 1,
                              (request.height, request.width), overlap))


_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..1 (..., 3) -> CIE Lab (L in 0..100), float64, no clipping (OpenCV's float path clips)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab -> sRGB in 0..1, unclipped (out-of-gamut colours fall outside 0..1)."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    linear = xyz @ np.linalg.inv(_RGB_TO_XYZ).T
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.abs(linear) ** (1 / 2.4) - 0.055)


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def grayscale(image: Image.Image) -> Image.Image:
    """The image's Lab lightness as a gray RGB image (what colourising starts from)."""
    lab = rgb_to_lab(_array(image))
    lab[..., 1:] = 0
    return Image.fromarray(_to_uint8(lab_to_rgb(lab)))


def colorize_like(original: Image.Image, colored: Image.Image) -> Image.Image:
    """`original`'s Lab lightness with `colored`'s chroma (resized to match). Where the pair falls outside sRGB the
    chroma is reduced per pixel, never the lightness, so L is kept to within 8-bit rounding."""
    lightness = rgb_to_lab(_array(original))[..., :1]
    chroma = rgb_to_lab(_array(colored.resize(original.size, Image.Resampling.LANCZOS)))[..., 1:]

    def rgb(factor: np.ndarray) -> np.ndarray:
        return lab_to_rgb(np.concatenate([lightness, chroma * factor], -1))

    def fits(factor: np.ndarray) -> np.ndarray:
        out = rgb(factor)
        return ((out >= 0) & (out <= 1)).all(-1, keepdims=True)

    low, high = np.zeros_like(lightness), np.ones_like(lightness)
    inside = fits(high)
    for _ in range(16):  # bisect the largest chroma factor that stays in gamut
        mid = (low + high) / 2
        ok = fits(mid)
        low, high = np.where(ok, mid, low), np.where(ok, high, mid)
    return Image.fromarray(_to_uint8(rgb(np.where(inside, 1.0, low))))


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (rgb.clip(0, 1) * 255.0).round().astype(np.uint8)
