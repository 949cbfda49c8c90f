"""Frames from the one engine: every frame is an ordinary generation request (so it batches, replays and is screened
like any image), planned here per mode. Interpolation between images and AnimateDiff need their own sampling loops
(`animation.inversion`, `animation.animatediff`)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from PIL import Image

from sfumato.animation.keyframes import parse_numbers, segment, value_at
from sfumato.animation.motion2d import match_colors, move
from sfumato.animation.progress import FrameProgress, ProgressCallback
from sfumato.animation.request import AnimationRequest
from sfumato.animation.video import read_frames
from sfumato.evaluation.metrics import temporal_report
from sfumato.requests import GeneratedImage, GenerationRequest

if TYPE_CHECKING:
    from sfumato.engine import Engine

@dataclass
class AnimationResult:
    frames: list[GeneratedImage]
    request: AnimationRequest
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def travel_requests(request: AnimationRequest, base: GenerationRequest) -> list[GenerationRequest]:
    """Prompt and seed travel: frame f between keyframes a and b at fraction t keeps a's prompt plus the direction
    t * (b - a) in conditioning space, and a's noise slerped toward b's by t (the variation-seed blend). A keyframe
    frame is exactly its keyframe's generation. With `loop` the first keyframe returns after the last frame."""
    prompts = dict(request.prompts or {0: base.prompt})
    seeds = dict(request.seeds or {0: base.seed})
    if request.loop:
        prompts[request.frames] = prompts[min(prompts)]
        seeds[request.frames] = seeds[min(seeds)]
    prompt_keys, seed_keys = sorted(prompts), sorted(seeds)
    scale = parse_numbers(request.direction_strength, "direction_strength")
    frames = []
    for f in range(request.frames):
        a, b, t = segment(prompt_keys, f)
        directions = [(toward, away, s * value_at(scale, f)) for toward, away, s in base.directions]
        if t > 0 and prompts[a] != prompts[b]:
            directions.append((prompts[b], prompts[a], t))
        sa, sb, u = segment(seed_keys, f)
        noise = {"seed": seeds[sa]}
        if u > 0 and seeds[sa] != seeds[sb]:
            noise.update(subseed=seeds[sb], subseed_strength=u)
        frames.append(dataclasses.replace(base, prompt=prompts[a], directions=directions, **noise))
    return frames


def story_requests(request: AnimationRequest, base: GenerationRequest) -> list[GenerationRequest]:
    """One frame per scene: the subject and the scene in one prompt, the same seed (and LoRAs) for every frame."""
    subject = request.subject.strip()
    return [dataclasses.replace(base, prompt=f"{subject}, {scene}" if subject else scene) for scene in request.scenes]


def preflight(engine: "Engine", request: AnimationRequest) -> GenerationRequest:
    """Resolve every distinct prompt the frames will use (model, LoRAs, sizes, prompt policy) before any work, so a
    bad keyframe fails now and not after the frames before it; returns the first frame's resolved settings."""
    base = dataclasses.replace(request.generation, batch_size=1, batch_count=1)
    if request.mode in ("loopback", "video", "interpolate"):  # their images come later; the settings are checked now
        base = dataclasses.replace(base, init_image=None, mask=None, controls=[u for u in base.controls
                                                                                if u.get("image")])
    if request.mode == "video-model":  # one clip: the video family's own checks
        from sfumato.animation.video_model import preflight_clip

        return preflight_clip(engine, request, base)
    texts = [*request.prompts.values()] or [base.prompt]
    if request.mode == "story":
        texts = [frame.prompt for frame in story_requests(request, base)]
    resolved = [engine.resolve(dataclasses.replace(base, prompt=text)) for text in dict.fromkeys(texts)]
    return resolved[0]


def animate(engine: "Engine", request: AnimationRequest, progress: ProgressCallback | None = None) -> AnimationResult:
    """Make the frames of a request (each an ordinary generation of `engine`) and measure them."""
    request = request.validate()
    started = time.perf_counter()
    preflight(engine, request)
    base = dataclasses.replace(request.generation, batch_size=1, batch_count=1).with_seeds_resolved()
    if request.mode == "travel" and base.sampler is None and request.seeds:
        base.sampler = "Euler"  # ancestral samplers draw fresh noise per step: seed travel would jump at keyframes
    tracker = FrameProgress(progress, request.frames)
    if request.mode == "travel":
        frames = _render_together(engine, travel_requests(request, base), tracker)
    elif request.mode == "story":
        frames = _render_together(engine, story_requests(request, base), tracker)
    elif request.mode == "loopback":
        frames = _loopback(engine, request, base, tracker)
    elif request.mode == "video":
        frames = _video(engine, request, base, tracker)
    elif request.mode == "interpolate":
        from sfumato.animation.inversion import interpolate_images

        frames = interpolate_images(engine, request, base, tracker)
    elif request.mode == "video-model":
        from sfumato.animation.video_model import animate_video_model

        frames = animate_video_model(engine, request, base, tracker)
    else:
        from sfumato.animation.animatediff import animate_motion

        frames = animate_motion(engine, request, base, tracker)
    for index, frame in enumerate(frames):
        frame.infotext += f", Animation: {request.mode} frame {index + 1}/{len(frames)}"
    result = AnimationResult(frames, request, seconds=time.perf_counter() - started)
    result.metrics = measure(result)
    return result


def measure(result: AnimationResult) -> dict:
    """Temporal SSIM (mean, worst pair), flicker and, for story frames, subject consistency (mean pairwise cosine
    similarity of the frames' Open-NSFW features)."""
    images = [frame.image for frame in result.frames]
    report = temporal_report(images) if len(images) > 1 else {"frames": len(images)}
    report.pop("per_pair", None)
    if result.request.mode == "story" and len(images) > 1:
        from sfumato.evaluation.features import load_extractor, mean_pairwise_cosine

        extractor = load_extractor()
        report["subject_consistency"] = mean_pairwise_cosine(images, extractor)
        report["subject_consistency_extractor"] = extractor.name
    report["seconds"] = round(result.seconds, 3)
    return report


def _render(engine: "Engine", requests: list[GenerationRequest], tracker: FrameProgress) -> Iterator[GeneratedImage]:
    for frame in requests:
        result = engine.generate(frame, tracker)
        tracker.next_frame(result.request.steps)
        yield result.images[0]


def _render_together(engine: "Engine", requests: list[GenerationRequest], tracker: FrameProgress,
                     chunk: int = 8) -> list[GeneratedImage]:
    """Frames that differ only in prompt, seed, subseed (and strength) and directions, `chunk` at a time through
    `generate_many` (one batch each when the model batches; the same images as one at a time, up to float
    rounding). Consistent frames (`consistent` > 0) run through `generate_shared`, the first frame leading every
    chunk (drawn again, the same image) so that every frame shares its attention."""
    frames: list[GeneratedImage] = []
    shared = requests[0].consistent > 0  # every frame shares attention with the first: it leads each later chunk
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        if shared:
            lead = [requests[0]] if start else []
            results = engine.generate_shared(lead + part, tracker)[len(lead):]
        else:
            results = engine.generate_many(part, tracker)
        for result in results:
            tracker.next_frame(result.request.steps)
            frames.append(result.images[0])
    return frames


def _schedules(request: AnimationRequest) -> dict[str, dict[int, float]]:
    return {name: parse_numbers(getattr(request, name), name)
            for name in ("strength", "zoom", "angle", "translation_x", "translation_y")}


def _img2img(engine: "Engine", base: GenerationRequest, image: Image.Image, strength: float, seed: int,
             folder: Path, index: int, tracker: FrameProgress, prompt: str | None = None) -> GeneratedImage:
    """One img2img frame from `image` (written to `folder`, as requests name images by path)."""
    path = folder / f"input-{index:05d}.png"
    image.save(path)
    controls = [{**unit, "image": unit.get("image") or str(path)} for unit in base.controls]
    frame = dataclasses.replace(base, init_image=str(path), strength=strength, seed=seed, controls=controls,
                                prompt=base.prompt if prompt is None else prompt,
                                width=base.width or image.width // 8 * 8, height=base.height or image.height // 8 * 8)
    result = engine.generate(frame, tracker)
    tracker.next_frame(max(1, int(result.request.steps * strength)))
    return result.images[0]


def _loopback(engine: "Engine", request: AnimationRequest, base: GenerationRequest,
              tracker: FrameProgress) -> list[GeneratedImage]:
    """Deforum's 2D mode: each frame is the previous one moved (zoom, rotate, pan), colour-matched to the first
    frame, then img2img'd at the strength of its frame. Strength 0 keeps the moved frame as it is."""
    schedules = _schedules(request)
    prompts = request.prompts or {0: base.prompt}
    with tempfile.TemporaryDirectory(prefix="sfumato-loopback-") as temp:
        folder = Path(temp)
        if request.init_image:
            from sfumato.pipelines.images import load_image

            image = load_image(request.init_image, "init image").convert("RGB")
            first = GeneratedImage(image, base.seed, base.subseed, "loopback init image", base, 0)
        else:
            first = next(_render(engine, [dataclasses.replace(base, prompt=prompts[min(prompts)])], tracker))
        frames = [first]
        for f in range(1, request.frames):
            at = {name: value_at(keys, f) for name, keys in schedules.items()}
            moved = move(frames[-1].image, at["zoom"], at["angle"], at["translation_x"], at["translation_y"])
            if request.color_coherence:
                moved = match_colors(moved, first.image)
            seed = base.seed + f if request.seed_behavior == "iter" else base.seed
            if at["strength"] <= 0:
                frames.append(GeneratedImage(moved, seed, base.subseed, frames[-1].infotext, frames[-1].request, 0))
                continue
            prompt = prompts[segment(sorted(prompts), f)[0]]
            frames.append(_img2img(engine, base, moved, at["strength"], seed, folder, f, tracker, prompt))
    return frames


def _video(engine: "Engine", request: AnimationRequest, base: GenerationRequest,
           tracker: FrameProgress) -> list[GeneratedImage]:
    """Video-to-video: each input frame through img2img with the same seed (control units without an image take the
    frame); with colour coherence each output is matched to the first output's colours."""
    limits = engine.limits
    inputs = read_frames(request.video, request.frames, limits.max_upload_pixels, limits.max_decoded_pixels)
    tracker.frames = len(inputs)
    strength = parse_numbers(request.strength, "strength")
    frames: list[GeneratedImage] = []
    with tempfile.TemporaryDirectory(prefix="sfumato-video-") as temp:
        for f, image in enumerate(inputs):
            frame = _img2img(engine, base, image, value_at(strength, f), base.seed, Path(temp), f, tracker)
            if request.color_coherence and frames:
                frame.image = match_colors(frame.image, frames[0].image)
            frames.append(frame)
    return frames
