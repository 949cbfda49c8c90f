"""Where the face is: a user-supplied face detector (OpenCV's YuNet, `face_detection_yunet_*.onnx` from the OpenCV
model zoo, run by `cv2.FaceDetectorYN`; no detector ships with the OpenCV wheel — OpenCV 5 dropped the Haar cascades —
and nothing is downloaded), a mask the user gives, or the centre of the picture.

A box is (x, y, w, h) in pixels. Crops are squares around the box (enlarged so hair and chin fit), masks are white
ellipses on black (white = repaint), as the inpainting code expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sfumato.errors import InvalidRequest, MissingDependency

Box = tuple[int, int, int, int]


class Detector:
    """A YuNet face detector from an `.onnx` file (cv2.FaceDetectorYN)."""

    def __init__(self, path: Path, score_threshold: float = 0.6):
        try:
            import cv2
        except ImportError:  # pragma: no cover - opencv-python-headless is a dependency
            raise MissingDependency("face detection needs opencv-python-headless") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidRequest(f"face detector {self.path} does not exist")
        if self.path.suffix.lower() != ".onnx":
            raise InvalidRequest("face detector: a YuNet .onnx file (OpenCV model zoo, face_detection_yunet)")
        try:
            self.yunet = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), score_threshold)
        except cv2.error as exc:
            raise InvalidRequest(f"{self.path.name} is not a YuNet face detector ({exc.err.strip()})") from None

    def boxes(self, image: Image.Image) -> list[Box]:
        """Faces, largest first."""
        import cv2

        rgb = np.asarray(image.convert("RGB"))
        self.yunet.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, faces = self.yunet.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        found = [tuple(int(v) for v in f[:4]) for f in (faces if faces is not None else [])]
        return sorted(found, key=lambda b: b[2] * b[3], reverse=True)


def center_box(size: tuple[int, int], fraction: float = 0.6) -> Box:
    width, height = size
    side = int(min(width, height) * fraction)
    return ((width - side) // 2, (height - side) // 2, side, side)


def face_box(image: Image.Image, detector: Detector | None) -> Box | None:
    """The largest face, or None (no detector, or no face found)."""
    if detector is None:
        return None
    boxes = detector.boxes(image)
    return boxes[0] if boxes else None


def square_crop(image: Image.Image, box: Box | None, size: int, margin: float = 1.8) -> Image.Image:
    """A square around `box` enlarged by `margin` (the whole centred square without a box), resized to `size`."""
    width, height = image.size
    if box is None:
        side = min(width, height)
        cx, cy = width / 2, height / 2
    else:
        x, y, w, h = box
        side = min(max(w, h) * margin, width, height)
        cx, cy = x + w / 2, y + h / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    side = int(round(side))
    return image.convert("RGB").crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def ellipse_mask(size: tuple[int, int], box: Box, grow: float = 1.15) -> Image.Image:
    """A white ellipse over `box` (grown a little) on black: the region to repaint."""
    x, y, w, h = box
    cx, cy, rx, ry = x + w / 2, y + h / 2, w * grow / 2, h * grow / 2
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    return mask


def mask_box(mask: Image.Image) -> Box:
    """The bounding box of a mask's white region."""
    found = Image.eval(mask.convert("L"), lambda v: 255 if v >= 128 else 0).getbbox()
    if found is None:
        raise InvalidRequest("the mask is empty: paint the face region white")
    left, top, right, bottom = found
    return (left, top, right - left, bottom - top)
