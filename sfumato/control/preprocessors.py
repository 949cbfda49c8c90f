"""Annotators (preprocessors): an input image -> the control map a control model expects.

Every map follows ControlNet 1.1's convention: an RGB uint8 image, white (or coloured) structure on black. The
annotators here need no downloaded weights (OpenCV and numpy); those that do (depth, pose, normal, segmentation,
lineart-anime, mlsd) are listed by name and refused with a message saying to pass a ready map with `none`.

`run(name, image, resolution, threshold_a, threshold_b)` resizes the image so its short side is `resolution`
(A1111's processor resolution; pixel-perfect picks it from the output size), runs the annotator, and returns the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from sfumato.errors import InvalidRequest
from sfumato.limits import LOCAL, check_pixels

Annotator = Callable[[np.ndarray, float, float], np.ndarray]  # HxWx3 uint8 RGB -> HxWx3 uint8 map


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Annotator | None  # None: needs weights this package cannot load offline
    threshold_a: tuple[str, float, float, float] | None = None  # (label, default, low, high)
    threshold_b: tuple[str, float, float, float] | None = None
    help: str = ""


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _rgb(single: np.ndarray) -> np.ndarray:
    return np.repeat(single[:, :, None], 3, axis=2)


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges (thresholds on the 0-255 gradient), white on black."""
    return _rgb(cv2.Canny(image, int(low), int(high)))


def threshold(image: np.ndarray, level: float, _: float) -> np.ndarray:
    """Bright pixels (grey > level) white, the rest black."""
    return _rgb(np.where(_gray(image) > level, 255, 0).astype(np.uint8))


def scribble(image: np.ndarray, level: float, _: float) -> np.ndarray:
    """A drawing in dark strokes on a light background -> white strokes on black (any stroke darker than `level`)."""
    return _rgb(np.where(_gray(image) < level, 255, 0).astype(np.uint8))


def soft_edge(image: np.ndarray, blur: float, _: float) -> np.ndarray:
    """Soft edges without a network (HED-like): Sobel gradient magnitude of the smoothed image, normalised."""
    gray = _gray(image).astype(np.float32)
    if blur > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)
    peak = float(magnitude.max())
    return _rgb((magnitude / peak * 255).round().astype(np.uint8) if peak > 0 else np.zeros_like(gray, np.uint8))


def lineart(image: np.ndarray, sigma: float, _: float) -> np.ndarray:
    """Lines from edges (difference of Gaussians, XDoG-like): white lines on black."""
    gray = _gray(image).astype(np.float32) / 255.0
    sigma = max(sigma, 0.3)
    dog = cv2.GaussianBlur(gray, (0, 0), sigma * 1.6) - cv2.GaussianBlur(gray, (0, 0), sigma)
    lines = np.clip(dog * 255.0 / max(float(dog.max()), 1e-6), 0, 255)
    return _rgb(lines.round().astype(np.uint8))


def shuffle(image: np.ndarray, seed: float, _: float) -> np.ndarray:
    """ControlNet 1.1's content shuffle: the image warped by a smooth random flow field (seeded)."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(int(seed))
    size = max(height, width) // 8 or 1

    def field() -> np.ndarray:
        noise = rng.random((height // size + 2, width // size + 2)).astype(np.float32)
        return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)

    x = (field() * width).astype(np.float32)
    y = (field() * height).astype(np.float32)
    return cv2.remap(image, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def tile(image: np.ndarray, down: float, _: float) -> np.ndarray:
    """ControlNet tile's resample: the image shrunk by `down` and enlarged again (detail removed, layout kept)."""
    height, width = image.shape[:2]
    factor = max(float(down), 1.0)
    small = cv2.resize(image, (max(1, round(width / factor)), max(1, round(height / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def blur(image: np.ndarray, sigma: float, _: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), max(float(sigma), 0.1))


def color_grid(image: np.ndarray, cells: float, _: float) -> np.ndarray:
    """T2I-Adapter colour control: the mean colour of each of `cells` x `cells`-pixel blocks (area down, nearest up)."""
    height, width = image.shape[:2]
    cells = max(int(cells), 1)
    small = cv2.resize(image, (max(1, width // cells), max(1, height // cells)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def invert(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    """255 - image: a black-on-white drawing becomes the white-on-black map ControlNets expect."""
    return 255 - image


def identity(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    return image


REFERENCE_MODULES = ("reference_only", "reference_adain", "reference_adain+attn")  # units without a control model
WEIGHTED = {
    "depth": "a depth estimator (MiDaS/Zoe/Depth Anything)",
    "openpose": "an OpenPose body/hand/face model",
    "normal": "a normal-map estimator (BAE)",
    "segmentation": "a semantic segmentation model (OneFormer/UniFormer)",
    "lineart_anime": "the anime lineart network",
    "mlsd": "the M-LSD line detector",
}

PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in [
    Preprocessor("none", identity, help="use the image as the map"),
    Preprocessor("canny", canny, ("Low threshold", 100, 1, 255), ("High threshold", 200, 1, 255), "Canny edges"),
    Preprocessor("threshold", threshold, ("Threshold", 127, 0, 255), help="bright pixels white"),
    Preprocessor("scribble", scribble, ("Stroke threshold", 200, 1, 255),
                 help="dark strokes on a light background -> white strokes on black"),
    Preprocessor("softedge", soft_edge, ("Smoothing", 1.0, 0, 10), help="soft edges, Sobel magnitude"),
    Preprocessor("lineart", lineart, ("Line width", 1.0, 0.3, 8), help="lines from a difference of Gaussians"),
    Preprocessor("shuffle", shuffle, ("Seed", 0, 0, 2**31 - 1), help="content shuffle (random warp)"),
    Preprocessor("tile", tile, ("Down-sampling rate", 4.0, 1, 16), help="tile resample: blurred by down/up-scaling"),
    Preprocessor("blur", blur, ("Sigma", 3.0, 0.1, 64), help="Gaussian blur"),
    Preprocessor("color", color_grid, ("Cell size", 64, 1, 512), help="colour grid (T2I-Adapter colour)"),
    Preprocessor("invert", invert, help="white on black from black on white"),
    Preprocessor("inpaint", identity, help="the image with the unit's mask marked for the inpaint ControlNet"),
    *[Preprocessor(name, identity, ("Style Fidelity (only for \"Balanced\" mode)", 0.5, 0, 1),
                   help=f"{what}; no control model (pipelines.reference)")
      for name, what in (("reference_only", "the reference steers self-attention"),
                         ("reference_adain", "the reference's feature statistics (AdaIN)"),
                         ("reference_adain+attn", "both"))],
    *[Preprocessor(name, None, help=f"needs {what}") for name, what in WEIGHTED.items()],
]}

ALIASES = {"canny_edge": "canny", "scribble_hed": "scribble", "scribble_xdog": "scribble", "invert (from white bg & "
           "black line)": "invert", "softedge_hed": "softedge", "softedge_pidinet": "softedge", "lineart_standard":
           "lineart", "lineart_realistic": "lineart", "tile_resample": "tile", "tile_colorfix": "tile",
           "t2ia_color_grid": "color", "color_grid": "color", "inpaint_only": "inpaint", "binary": "threshold",
           "depth_midas": "depth", "depth_zoe": "depth", "depth_anything": "depth", "openpose_full": "openpose",
           "normal_bae": "normal", "seg_ofade20k": "segmentation", "seg_ufade20k": "segmentation",
           "shuffle_content": "shuffle", "content_shuffle": "shuffle"}


def get(name: str) -> Preprocessor:
    """The preprocessor called `name` (A1111 module names are accepted as aliases)."""
    key = (name or "none").strip().lower()
    key = ALIASES.get(key, key)
    if key not in PREPROCESSORS:
        raise InvalidRequest(f"unknown preprocessor {name!r}; choose one of {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[key]


def short_side_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size of an image of `size` whose short side is scaled to `side` (the long side follows)."""
    width, height = size
    scale = side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_short_side(image: Image.Image, side: int) -> Image.Image:
    size = short_side_size(image.size, side)
    scale = side / min(image.size)
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS
    return image.resize(size, resample) if size != image.size else image


def run(name: str, image: Image.Image, resolution: int | None = None, threshold_a: float | None = None,
        threshold_b: float | None = None, max_pixels: int = LOCAL.max_pixels) -> Image.Image:
    """Apply preprocessor `name` to `image` (short side scaled to `resolution` first when given; the map must fit
    `max_pixels`, both sides counted: a 16x1024 image at resolution 1448 would be 1448x92672)."""
    pre = get(name)
    if pre.run is None:
        raise InvalidRequest(f"preprocessor {pre.name!r} {pre.help}, which sfumato cannot load offline; make the map "
                             f"with another tool and pass it with the preprocessor 'none'")
    image = image.convert("RGB")
    if resolution:
        if not 16 <= resolution <= 4096:
            raise InvalidRequest(f"processor resolution must be between 16 and 4096, got {resolution}")
        check_pixels(*short_side_size(image.size, int(resolution)), max_pixels, "the control map")
        image = resize_short_side(image, int(resolution))
    a = threshold_a if threshold_a is not None and threshold_a >= 0 else (pre.threshold_a or ("", 0))[1]
    b = threshold_b if threshold_b is not None and threshold_b >= 0 else (pre.threshold_b or ("", 0))[1]
    return Image.fromarray(pre.run(np.asarray(image, dtype=np.uint8).copy(), float(a), float(b)))


def pixel_perfect_resolution(image_size: tuple[int, int], target: tuple[int, int], resize_mode: str) -> int:
    """A1111's pixel-perfect processor resolution: the short side the map needs to match the output pixel for pixel."""
    raw_w, raw_h = image_size
    target_w, target_h = target
    k_h, k_w = target_h / raw_h, target_w / raw_w
    scale = min(k_h, k_w) if resize_mode == "resize_and_fill" else max(k_h, k_w)
    return int(round(scale * min(raw_h, raw_w)))
