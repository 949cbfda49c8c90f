"""The animation request: how frames are made (`mode`) and the generation settings every frame shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sfumato.animation.keyframes import MAX_FRAMES, parse_numbers, parse_prompts
from sfumato.errors import InvalidRequest
from sfumato.requests import MAX_SEED, GenerationRequest, _check_range, check_known_fields

MODES = {
    "travel": "prompt travel and seed travel between keyframes (conditioning and noise interpolated)",
    "loopback": "each frame img2img of the previous one, with 2D motion (zoom, rotate, pan) and colour coherence",
    "video": "video-to-video: every frame of an input video through img2img with a fixed seed (and control units)",
    "story": "consistent story frames: one subject and seed, a scene prompt per frame",
    "interpolate": "between two images: DDIM-invert both, slerp the inverted noise, sample back",
    "motion": "AnimateDiff: a motion module animates every frame together (SD 1.5 models)",
    "video-model": "a video model (Wan, LTX-Video, Stable Video Diffusion) makes the clip: text-to-video, or "
                   "image-to-video from one --image",
}
FORMATS = ("gif", "webp", "mp4")
SCHEDULES = ("strength", "zoom", "angle", "translation_x", "translation_y", "direction_strength")


@dataclass
class AnimationRequest:
    """A sequence of frames from one engine. `generation` holds what every frame shares (model, size, sampler,
    steps, CFG, seed, negative prompt, LoRAs, control units); its prompt is used where no keyframe is given.

    Number schedules (`strength`, `zoom`, ...) take a number or Deforum's `0:(0.6), 12:(0.4)`."""

    generation: GenerationRequest
    mode: str = "travel"
    frames: int = 16
    fps: float = 8.0
    prompts: dict[int, str] = field(default_factory=dict)  # travel: frame -> prompt keyframes
    seeds: dict[int, int] = field(default_factory=dict)  # travel: frame -> seed keyframes (noise slerped between)
    loop: bool = False  # travel: the last frame leads back into the first (a seamless loop)
    direction_strength: Any = 1.0  # schedule scaling the generation's directions per frame (attribute sweeps)
    strength: Any = 0.5  # loopback / video: denoising strength schedule
    zoom: Any = 1.0  # loopback: scale per frame (1.02 = 2 % closer each frame)
    angle: Any = 0.0  # loopback: degrees per frame, counter-clockwise
    translation_x: Any = 0.0  # loopback: pixels per frame
    translation_y: Any = 0.0
    color_coherence: bool = True  # loopback / video: match each input's colour histogram to the first frame
    seed_behavior: str = "iter"  # loopback: iter (seed + frame) or fixed
    init_image: str | None = None  # loopback: start from this image instead of a generated first frame
    video: str | None = None  # video mode: input video (MP4/WebM/MOV/GIF/WebP) or a folder of frames
    subject: str = ""  # story: the subject every frame shows
    scenes: list[str] = field(default_factory=list)  # story: one scene prompt per frame
    images: list[str] = field(default_factory=list)  # interpolate: the two images; video-model: the first frame
    inversion_steps: int = 50  # interpolate: DDIM steps of the inversion and of the sampling back
    motion_adapter: str | None = None  # motion: AnimateDiff motion module (path or name in models/motion)
    motion_loras: list[tuple[str, float]] = field(default_factory=list)  # motion: motion LoRAs (path, weight)
    context_length: int = 16  # motion: frames the motion module sees at once (sliding windows beyond)
    context_overlap: int = 4  # motion: frames shared by neighbouring windows
    formats: list[str] = field(default_factory=lambda: ["gif", "mp4"])

    def validate(self) -> AnimationRequest:
        if not isinstance(self.generation, GenerationRequest):
            raise InvalidRequest("generation must be a generation request")
        if self.mode not in MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _check_range("frames", self.frames, 1, MAX_FRAMES, integer=True)
        if (self.generation.consistent or 0) > 0 and self.mode not in ("travel", "story"):
            raise InvalidRequest("consistent frames (shared attention with the first frame) are for travel and story "
                                 f"modes, not {self.mode}")
        _check_range("fps", self.fps, 0.5, 60.0)
        _check_range("inversion_steps", self.inversion_steps, 2, 150, integer=True)
        _check_range("context_length", self.context_length, 2, 64, integer=True)
        _check_range("context_overlap", self.context_overlap, 0, 63, integer=True)
        if self.context_overlap >= self.context_length:
            raise InvalidRequest("context_overlap must be smaller than context_length")
        self.prompts = parse_prompts(self.prompts) if self.prompts else {}
        self.seeds = {int(k): v for k, v in parse_numbers(self.seeds, "seeds").items()} if self.seeds else {}
        for frame, seed in self.seeds.items():
            if seed != int(seed) or not 0 <= seed <= MAX_SEED:
                raise InvalidRequest(f"seed keyframe {frame}: seeds are integers in 0..{MAX_SEED}")
        self.seeds = {k: int(v) for k, v in self.seeds.items()}
        for name in SCHEDULES:
            parse_numbers(getattr(self, name), name)
        for name in ("loop", "color_coherence"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequest(f"{name} must be true or false")
        if self.seed_behavior not in ("iter", "fixed"):
            raise InvalidRequest(f"seed_behavior must be iter or fixed, got {self.seed_behavior!r}")
        if not isinstance(self.formats, list) or not set(self.formats) <= set(FORMATS):
            raise InvalidRequest(f"formats must be a list of {', '.join(FORMATS)}")
        for name in ("scenes", "images"):
            if not isinstance(getattr(self, name), list) or not all(isinstance(v, str) for v in getattr(self, name)):
                raise InvalidRequest(f"{name} must be a list of strings")
        if not isinstance(self.subject, str):
            raise InvalidRequest("subject must be text")
        self._check_mode()
        return self

    def _check_mode(self) -> None:
        mode = self.mode
        needs = {"video": ("video", "an input video (--video)"), "interpolate": ("images", "two images (--image A "
                 "--image B)"), "motion": ("motion_adapter", "a motion module (--motion-adapter)"),
                 "story": ("scenes", "scene prompts (--scene ..., one per frame)")}
        if mode in needs and not getattr(self, needs[mode][0]):
            raise InvalidRequest(f"{mode} mode needs {needs[mode][1]}")
        if mode == "interpolate" and len(self.images) != 2:
            raise InvalidRequest(f"interpolate mode takes exactly two images, got {len(self.images)}")
        if mode == "video-model" and len(self.images) > 1:
            raise InvalidRequest(f"video-model mode animates at most one image (its first frame), got {len(self.images)}")
        if self.images and mode not in ("interpolate", "video-model"):
            raise InvalidRequest("images are for interpolate (two) and video-model (one first frame) modes")
        if self.prompts and mode not in ("travel", "loopback", "motion"):
            raise InvalidRequest(f"prompt keyframes are for travel, loopback and motion modes, not {mode}")
        if self.seeds and mode != "travel":
            raise InvalidRequest("seed keyframes are for travel mode")
        if self.scenes and mode != "story":
            raise InvalidRequest("scenes are for story mode")
        if self.init_image and mode != "loopback":
            raise InvalidRequest("init_image starts a loopback animation (for other modes put it in generation)")
        if mode == "story":
            self.frames = len(self.scenes)
        if mode != "motion" and self.motion_adapter:
            raise InvalidRequest("a motion adapter is for motion mode")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["generation"] = self.generation.to_dict()
        data["prompts"] = {str(k): v for k, v in self.prompts.items()}
        data["seeds"] = {str(k): v for k, v in self.seeds.items()}
        data["motion_loras"] = [[n, w] for n, w in self.motion_loras]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnimationRequest:
        check_known_fields(cls, data, "animation")
        data = dict(data)
        generation = data.pop("generation", None) or {}
        if not isinstance(generation, dict):
            raise InvalidRequest("generation must be an object of generation settings")
        generation = GenerationRequest.from_dict({"prompt": "", **generation})
        try:
            data["motion_loras"] = [(str(n), float(w)) for n, w in data.get("motion_loras") or []]
        except (TypeError, ValueError):
            raise InvalidRequest("motion_loras must be [name, weight] pairs") from None
        return cls(generation=generation, **data)
