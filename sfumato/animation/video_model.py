"""`sfumato animate --mode video-model`: a video model (Wan, LTX-Video, Stable Video Diffusion) makes the whole clip
in one pass (`pipelines.video`); its frames are the animation's, written and measured like every mode's."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from sfumato.animation.request import AnimationRequest
from sfumato.output import infotext
from sfumato.pipelines.images import load_image
from sfumato.pipelines.video import check_clip, generate_clip
from sfumato.requests import GeneratedImage, GenerationRequest

if TYPE_CHECKING:
    from sfumato.animation.progress import FrameProgress
    from sfumato.engine import Engine


def preflight_clip(engine: "Engine", request: AnimationRequest, base: GenerationRequest) -> GenerationRequest:
    """The clip's resolved settings; its frame count and image checked against the model before any weights load."""
    resolved = engine.resolve(base, video=True)
    info = engine.describe(resolved.model)
    pipeline = _pipeline_class(info)
    check_clip(info.family.name, pipeline, request.frames, request.images[0] if request.images else None)
    return resolved


def animate_video_model(engine: "Engine", request: AnimationRequest, base: GenerationRequest,
                        tracker: "FrameProgress") -> list[GeneratedImage]:
    resolved = preflight_clip(engine, request, base)
    model, _ = engine.prepared(resolved)  # its LoRAs active (Wan, LTX: diffusers' loaders)
    image = load_image(request.images[0], "first frame") if request.images else None
    pictures = generate_clip(model, resolved, request.frames, request.fps, image, _StepProgress(tracker))
    text = infotext(resolved, resolved.seed, resolved.subseed, model.info.name, model.hash)
    text += f", Video model: {model.family}, Frames: {len(pictures)}"
    return [GeneratedImage(picture, resolved.seed, resolved.subseed, text, dataclasses.replace(resolved), index)
            for index, picture in enumerate(pictures)]


def _pipeline_class(info) -> str:
    import json

    index = info.path / "model_index.json"
    return json.loads(index.read_text()).get("_class_name", "") if index.exists() else ""


class _StepProgress:
    """The clip's denoising steps as the animation's progress (one pass makes every frame)."""

    def __init__(self, tracker: "FrameProgress"):
        self.callback, self.done, self.total = tracker.callback, 0, 0

    def add_total(self, steps: int) -> None:
        self.total += steps
        self._report()

    def step(self) -> None:
        self.done += 1
        self._report()

    def _report(self) -> None:
        if self.callback:
            self.callback(self.done, self.total)
