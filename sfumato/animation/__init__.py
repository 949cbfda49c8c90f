"""Animation: prompt and seed travel, loopback with 2D motion, video-to-video, story frames, interpolation between
images (DDIM inversion) and AnimateDiff motion modules; video files and temporal-consistency metrics.

Every frame that can be an ordinary generation request is one (`run`), so frames replay from their PNGs like any
image; `animation.run.animate(engine, AnimationRequest)` is the entry point."""

from sfumato.animation.request import FORMATS, MODES, AnimationRequest

__all__ = ["AnimationRequest", "FORMATS", "MODES"]
