"""Progress over a whole animation: each frame's steps counted into the animation's."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[int, int], None]


class FrameProgress:
    """Turns each frame's (steps done, steps known) into the whole animation's, estimating unseen frames alike."""

    def __init__(self, callback: ProgressCallback | None, frames: int):
        self.callback, self.frames, self.frame, self.done_before = callback, frames, 0, 0

    def __call__(self, done: int, total: int) -> None:
        if self.callback:
            self.callback(self.done_before + done, self.done_before + total * (self.frames - self.frame))

    def next_frame(self, steps: int) -> None:
        self.frame += 1
        self.done_before += steps
