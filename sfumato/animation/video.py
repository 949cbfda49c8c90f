"""Video files: read frames (MP4/WebM/MOV through the ffmpeg binary of PyPI `imageio-ffmpeg`, GIF/WebP through
Pillow, or a folder of images) and write GIF, animated WebP and H.264 MP4."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from sfumato.errors import InvalidRequest, ModelNotFound, RuntimeFailure
from sfumato.limits import LOCAL, OverBudget, check_pixels

PILLOW_ANIMATIONS = {".gif", ".webp", ".png", ".apng"}
FFMPEG_VIDEOS = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}


def read_frames(source: str | Path, limit: int | None = None, frame_pixels: int = LOCAL.max_upload_pixels,
                total_pixels: int = LOCAL.max_decoded_pixels) -> list[Image.Image]:
    """The frames of a video or animated image (or the images of a folder, by name), at most `limit`; each frame
    within `frame_pixels` and all of them within `total_pixels` (checked from the header before decoding where the
    container says its frame count, else frame by frame)."""
    from sfumato.evaluation.images import load_folder

    path = Path(source).expanduser()
    if not path.exists():
        raise ModelNotFound(f"video {source} does not exist")
    budget = _Budget(str(source), frame_pixels, total_pixels)
    if path.is_dir():
        frames = load_folder(path, "frames folder")[:limit]
        for frame in frames:
            budget.add(frame.size)
    elif path.suffix.lower() in FFMPEG_VIDEOS:
        frames = _ffmpeg_frames(path, limit, budget)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget below decides
                with Image.open(path) as image:
                    count = min(getattr(image, "n_frames", 1), limit or 2**31)
                    budget.expect(image.size, count)
                    frames = []
                    for frame in ImageSequence.Iterator(image):
                        budget.add(frame.size)
                        frames.append(frame.convert("RGB"))
                        if limit is not None and len(frames) >= limit:
                            break
        except Image.DecompressionBombError:
            raise OverBudget(f"{source}: its frames have more pixels than the decoder allows") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidRequest(f"{source}: not a readable video or animated image ({exc})") from None
    if not frames:
        raise InvalidRequest(f"{source} has no frames")
    return frames


class _Budget:
    """Pixels decoded from one video so far, against the per-frame and total budgets."""

    def __init__(self, source: str, frame_pixels: int, total_pixels: int):
        self.source, self.frame_pixels, self.total_pixels, self.total = source, frame_pixels, total_pixels, 0

    def expect(self, size: tuple[int, int], count: int) -> None:
        check_pixels(*size, self.frame_pixels, f"{self.source}: a frame", OverBudget)
        if size[0] * size[1] * count > self.total_pixels:
            raise OverBudget(f"{self.source}: {count} frames of {size[0]}x{size[1]} are more than the limit of "
                             f"{self.total_pixels} decoded pixels; use fewer or smaller frames")

    def add(self, size: tuple[int, int]) -> None:
        check_pixels(*size, self.frame_pixels, f"{self.source}: a frame", OverBudget)
        self.total += size[0] * size[1]
        if self.total > self.total_pixels:
            raise OverBudget(f"{self.source}: its frames are more than the limit of {self.total_pixels} decoded "
                             "pixels; use fewer or smaller frames")


def _ffmpeg_frames(path: Path, limit: int | None, budget: _Budget) -> list[Image.Image]:
    import imageio_ffmpeg

    frames = []
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        width, height = meta["size"]
        budget.expect((width, height), 1)
        for raw in reader:
            budget.add((width, height))
            frames.append(Image.frombytes("RGB", (width, height), raw))
            if limit is not None and len(frames) >= limit:
                break
    except (RuntimeError, OSError, StopIteration) as exc:
        raise InvalidRequest(f"{path}: not a readable video ({str(exc).strip().splitlines()[-1:]})") from None
    finally:
        reader.close()  # stops the ffmpeg process, also when the budget ran out
    return frames


def write_video(frames: list[Image.Image], path: Path, fps: float) -> Path:
    """GIF, WebP (looping) or MP4 (H.264, yuv420p, playable in browsers) by the file's suffix."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    duration = round(1000 / fps)
    rgb = [frame.convert("RGB") for frame in frames]
    if kind == "gif":
        rgb[0].save(path, save_all=True, append_images=rgb[1:], duration=duration, loop=0, optimize=False)
    elif kind == "webp":
        rgb[0].save(path, save_all=True, append_images=rgb[1:], duration=duration, loop=0, lossless=True)
    elif kind == "mp4":
        _write_mp4(rgb, path, fps)
    else:
        raise InvalidRequest(f"unknown video format {path.suffix!r}: use .gif, .webp or .mp4")
    return path


def _write_mp4(frames: list[Image.Image], path: Path, fps: float) -> None:
    import imageio_ffmpeg

    width, height = frames[0].size
    even = (width + width % 2, height + height % 2)  # yuv420p needs even sides
    writer = imageio_ffmpeg.write_frames(str(path), even, fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=None, output_params=["-crf", "12"], macro_block_size=1,
                                         ffmpeg_log_level="error")
    try:
        writer.send(None)
        for frame in frames:
            if frame.size != even:
                canvas = Image.new("RGB", even)
                canvas.paste(frame)
                frame = canvas
            writer.send(np.ascontiguousarray(np.asarray(frame)))
        writer.close()
    except (RuntimeError, OSError, BrokenPipeError) as exc:
        raise RuntimeFailure(f"writing {path} failed: {exc}") from None


def save_animation(result, folder: Path, model_sha256: str | None = None, name: str = "animation",
                   extras: Path | None = None) -> dict:
    """Write an `AnimationResult`: the videos of the request's formats as `folder/name.<format>`, and into `extras`
    (default: `folder`) each frame as a PNG with its generation record (frames/), metrics.json (temporal SSIM,
    flicker, ...) and animation.json. Returns what was written."""
    import json

    from sfumato.output import save_generated

    folder = Path(folder)
    extras = Path(extras) if extras else folder
    frame_dir = extras / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    frames = [str(save_generated(item, frame_dir / f"{index:05d}.png", model_sha256))
              for index, item in enumerate(result.frames)]
    images = [item.image for item in result.frames]
    videos = {kind: str(write_video(images, folder / f"{name}.{kind}", result.request.fps))
              for kind in result.request.formats}
    summary = {"frames": frames, "videos": videos, "metrics": result.metrics, "request": result.request.to_dict()}
    (extras / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    (extras / "animation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
