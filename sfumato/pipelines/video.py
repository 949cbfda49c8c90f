"""Video models through their diffusers pipelines: one clip of frames from a prompt (text-to-video) or from a first
image (image-to-video). A video family is one entry of VIDEO_FAMILIES: which pipelines it has, the frame counts its
VAE takes, how guidance is given. `animation.video_model` turns a clip into an animation's frames.

Each clip's noise comes from one CPU generator seeded with the request's seed (so a seed replays the clip, and
equals the plain diffusers pipeline given that generator); the family's own scheduler runs it.
"""

from __future__ import annotations

import torch
from PIL import Image

from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.families import FAMILIES, VideoFamily
from sfumato.models.lora import takes_loras
from sfumato.requests import GenerationRequest


# how each video family's pipelines are driven: the `video` spec of its entry in models.families
VIDEO_FAMILIES: dict[str, VideoFamily] = {f.name: f.video for f in FAMILIES.values() if f.video is not None}


def check_video_request(family: str, request: GenerationRequest) -> None:
    """Refuse, before any work, what the video pipelines do not take (their frame count and image are checked with
    the animation, `check_clip`)."""
    spec = VIDEO_FAMILIES[family]
    if request.sampler != FAMILIES[family].default_sampler:
        raise UnsupportedModel(f"{family} runs its own scheduler ({FAMILIES[family].default_sampler}); leave the "
                               "sampler unset")
    used = [name for name, on in (("init image or mask", bool(request.init_image or request.mask)),
                                  ("ControlNet units", bool(request.controls)), ("IP-Adapter", bool(request.ip_adapter)),
                                  ("hires fix", request.hires_scale > 1), ("variation seeds", request.subseed_strength > 0),
                                  ("batches", request.batch_size > 1 or request.batch_count > 1),
                                  ("LoRAs", bool(request.loras) and not takes_loras(family)),
                                  ("tiling", request.tile)) if on]
    if used:
        raise UnsupportedModel(f"{family} video clips do not take {', '.join(used)} yet")
    if request.width % spec.size_multiple or request.height % spec.size_multiple:
        raise UnsupportedModel(f"{family} sizes must be multiples of {spec.size_multiple} px")


def check_clip(family: str, pipeline: str, frames: int, image: str | None) -> None:
    spec = VIDEO_FAMILIES[family]
    if (frames - 1) % spec.frame_step:
        low = (frames - 1) // spec.frame_step * spec.frame_step + 1
        raise InvalidRequest(f"{family} makes 1 + a multiple of {spec.frame_step} frames: try {low} or "
                             f"{low + spec.frame_step}")
    if image is None and pipeline not in spec.text_to_video and not (spec.same_weights and spec.text_to_video):
        raise InvalidRequest(f"this {family} model animates an image (image-to-video): give its first frame "
                             "(--image; `images` over HTTP)")
    if image is not None and pipeline in spec.text_to_video and not spec.same_weights:
        raise InvalidRequest(f"this {family} model is text-to-video; animating an image needs its image-to-video "
                             "model folder")


def generate_clip(model, request: GenerationRequest, frames: int, fps: float, image: Image.Image | None,
                  progress) -> list[Image.Image]:
    """One clip of `frames` frames from the loaded video model (`model`, a LoadedModel) with the request's prompt,
    size, steps, guidance and seed; image-to-video when `image` is given."""
    import diffusers

    spec = VIDEO_FAMILIES[model.family]
    pipe = model.pipe
    if image is not None and spec.same_weights and type(pipe).__name__ not in spec.image_to_video:
        pipe = getattr(diffusers, spec.image_to_video[0]).from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
    inputs: dict = {"height": request.height, "width": request.width, "num_frames": frames,
                    "num_inference_steps": request.steps, "generator": torch.Generator().manual_seed(request.seed),
                    "output_type": "pil"}
    if image is not None:
        inputs["image"] = image.convert("RGB").resize((request.width, request.height), Image.Resampling.LANCZOS)
    if spec.prompt:
        inputs.update(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      guidance_scale=request.cfg_scale)
    else:  # SVD: guidance rises from 1 at the first frame to cfg_scale at the last; fps conditions the motion
        inputs.update(min_guidance_scale=1.0, max_guidance_scale=request.cfg_scale, fps=max(2, round(fps)),
                      decode_chunk_size=8)  # the pipeline conditions on fps - 1, as SVD was trained
    progress.add_total(request.steps)

    def on_step(_pipe, _index, _timestep, _tensors):
        progress.step()
        return {}

    return list(pipe(callback_on_step_end=on_step, **inputs).frames[0])
