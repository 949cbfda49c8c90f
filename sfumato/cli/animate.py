"""Command-line adapter for `sfumato animate`: prompt/seed travel, loopback, video-to-video, story frames, image
interpolation and AnimateDiff, written as GIF/WebP/MP4 plus PNG frames and metrics.json."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from sfumato.cli.common import add_runtime_args, add_sampling_args, Bar, control_arg, make_engine, fast_settings, lora_arg
from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest, parse_direction

EXAMPLES = """examples:
  sfumato animate --keyframes '0: "a red apple", 12: "a green apple", 24: "a pear"' --frames 25
  sfumato animate "a cat" --seeds "0:(1), 8:(2), 16:(3)" --loop --frames 24
  sfumato animate "a sunflower" --mode loopback --zoom 1.03 --angle 2 --strength 0.45 --frames 30
  sfumato animate "a watercolor painting" --mode video --video clip.mp4 --strength 0.5
  sfumato animate --mode story --subject "a robot" --scene "in a forest" --scene "at the sea"
  sfumato animate "a face" --mode interpolate --image a.png --image b.png --frames 12
  sfumato animate "a boat on a lake" --mode motion --motion-adapter animatediff-v1-5-2 -m sd15
  sfumato animate "a cat walks on grass" --mode video-model -m Wan2.1-T2V-1.3B --frames 33 --fps 16
  sfumato animate --mode video-model -m stable-video-diffusion-img2vid --image photo.png --frames 14"""


def add_parsers(commands) -> None:
    from sfumato.animation.request import FORMATS, MODES

    anim = commands.add_parser("animate", help="animations: prompt/seed travel, loopback, video-to-video, story, "
                                               "interpolation, AnimateDiff -> GIF/WebP/MP4 + frames",
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    anim.add_argument("prompt", nargs="?", default="", help="the prompt of frames without a keyframe")
    anim.add_argument("--mode", choices=list(MODES), default="travel",
                      help="; ".join(f"{name}: {text}" for name, text in MODES.items()))
    anim.add_argument("--frames", type=int, help="number of frames (default 16; video: every input frame; "
                                                 "story: one per scene)")
    anim.add_argument("--fps", type=float, default=8.0)
    anim.add_argument("--keyframes", help="prompt keyframes: '0: \"a red apple\", 24: \"a green apple\"' "
                                          "(conditioning interpolated between them)")
    anim.add_argument("--seeds", help="seed keyframes: '0:(1), 12:(2)' (initial noise slerped between them)")
    anim.add_argument("--loop", action="store_true", help="travel back to the first keyframe (a seamless loop)")
    anim.add_argument("--direction", action="append", default=[], metavar="TOWARD|AWAY[:STRENGTH]",
                      help="a conditioning direction on every frame ('smiling:0.8'); see generate --direction")
    anim.add_argument("--direction-strength", default=1.0, metavar="SCHEDULE",
                      help="scales the directions per frame, e.g. '0:(0), 15:(1)' for an attribute sweep")
    motion = anim.add_argument_group("loopback and video-to-video")
    motion.add_argument("--strength", default=0.5, metavar="SCHEDULE", help="denoising strength, e.g. 0.5 or "
                                                                            "'0:(0.6), 20:(0.4)'")
    motion.add_argument("--zoom", default=1.0, metavar="SCHEDULE", help="scale per frame (1.02: 2%% closer)")
    motion.add_argument("--angle", default=0.0, metavar="SCHEDULE", help="degrees per frame, counter-clockwise")
    motion.add_argument("--translation-x", default=0.0, metavar="SCHEDULE", help="pixels per frame")
    motion.add_argument("--translation-y", default=0.0, metavar="SCHEDULE")
    motion.add_argument("--no-color-coherence", dest="color_coherence", action="store_false",
                        help="let colours drift (default: match every frame to the first frame's histogram)")
    motion.add_argument("--seed-behavior", choices=["iter", "fixed"], default="iter", help="loopback seeds")
    motion.add_argument("--init-image", help="loopback: start from this image")
    motion.add_argument("--video", help="video mode: input video (MP4/WebM/MOV/GIF/WebP) or a folder of frames")
    other = anim.add_argument_group("story, interpolation and AnimateDiff")
    other.add_argument("--subject", default="", help="story: the subject of every frame")
    other.add_argument("--scene", action="append", default=[], help="story: a scene prompt (one per frame)")
    other.add_argument("--image", action="append", default=[], help="interpolate: an end image (give two); video-model: the first frame "
                       "(image-to-video)")
    other.add_argument("--inversion-steps", type=int, default=50, help="interpolate: DDIM inversion steps")
    other.add_argument("--motion-adapter", help="AnimateDiff motion module: diffusers folder, .safetensors file or "
                                                "a name in $SFUMATO_HOME/models/motion")
    other.add_argument("--motion-lora", action="append", type=lora_arg, default=[], metavar="PATH[:WEIGHT]")
    other.add_argument("--context-length", type=int, default=16, help="frames the motion module sees at once")
    other.add_argument("--context-overlap", type=int, default=4, help="frames shared by neighbouring windows")
    gen = anim.add_argument_group("generation settings shared by every frame")
    add_sampling_args(gen)
    gen.add_argument("--vae")
    gen.add_argument("--negative", "--negative-prompt", dest="negative_prompt", default="")
    gen.add_argument("--preset")
    gen.add_argument("--fast", action="store_true", help="the embedded model at its few-step settings")
    gen.add_argument("--clip-skip", type=int, default=1)
    gen.add_argument("--control", action="append", type=control_arg, default=[], metavar="TYPE:IMAGE[:MODEL][:WEIGHT]",
                     help="a control unit on every frame; in video mode TYPE:frame uses each input frame")
    gen.add_argument("--consistent", type=float, nargs="?", const=1.0, default=0.0, metavar="STRENGTH",
                     help="travel and story: every frame shares self-attention with the first (one subject and "
                          "style across the frames; strength 0..2, 1 without a value)")
    anim.add_argument("--format", default="gif,mp4", help=f"comma-separated: {', '.join(FORMATS)}")
    anim.add_argument("--output", "-o", type=Path,
                      help="NAME.gif|.webp|.mp4: that file (the other --format videos beside it, frames and metrics "
                           "in NAME.frames/); or a folder (default: outputs/animations/<time>/)")
    anim.add_argument("--json", action="store_true")
    add_runtime_args(anim)
    anim.set_defaults(run=cmd_animate)


def request_from_args(args: argparse.Namespace):
    from sfumato.animation.request import AnimationRequest

    controls = [{**unit, "image": None if unit["image"] == "frame" else unit["image"]} for unit in args.control]
    generation = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, **fast_settings(args), vae=args.vae,
        sampler=args.sampler, cfg_scale=args.cfg_scale, seed=args.seed, width=args.width, height=args.height,
        clip_skip=args.clip_skip, loras=list(args.lora), controls=controls, consistent=args.consistent,
        directions=[parse_direction(text, args.prompt) for text in args.direction])
    frames = args.frames if args.frames is not None else {"video": 1000, "video-model": 17}.get(args.mode, 16)
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    return AnimationRequest(
        generation, mode=args.mode, frames=frames, fps=args.fps, prompts=args.keyframes or {},
        seeds=args.seeds or {}, loop=args.loop, direction_strength=args.direction_strength, strength=args.strength,
        zoom=args.zoom, angle=args.angle, translation_x=args.translation_x, translation_y=args.translation_y,
        color_coherence=args.color_coherence, seed_behavior=args.seed_behavior, init_image=args.init_image,
        video=args.video, subject=args.subject, scenes=list(args.scene), images=list(args.image),
        inversion_steps=args.inversion_steps, motion_adapter=args.motion_adapter, motion_loras=list(args.motion_lora),
        context_length=args.context_length, context_overlap=args.context_overlap, formats=formats).validate()


def cmd_animate(args: argparse.Namespace) -> int:
    from sfumato.animation.video import save_animation
    from sfumato.models.home import sha256
    from sfumato.output import check_writable

    request = request_from_args(args)
    if not (request.prompts or request.generation.prompt or request.scenes
            or request.mode == "video-model"):  # a video model's own checks say what it needs (SVD: an image)
        raise InvalidRequest("give a prompt, --keyframes, or (story mode) --scene prompts")
    from sfumato.animation.request import FORMATS

    folder = args.output or Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")) / "animations" / \
        time.strftime("%Y%m%d-%H%M%S")
    name, extras = "animation", None
    kind = folder.suffix.lower().lstrip(".")
    if kind in FORMATS:  # -o loop.gif: that file, the other formats beside it, frames and metrics in loop.frames/
        if folder.is_dir():
            raise InvalidRequest(f"--output {folder} is a folder; give a file name or another folder")
        name, extras, folder = folder.stem, folder.parent / f"{folder.stem}.frames", folder.parent
        request = dataclasses.replace(request, formats=[kind, *(f for f in request.formats if f != kind)])
    elif folder.exists() and not folder.is_dir():
        raise InvalidRequest(f"--output {folder} is a file; give a folder, or a name ending in "
                             f"{', '.join('.' + f for f in FORMATS)}")
    check_writable(folder.parent if not folder.exists() else folder)
    from sfumato.animation.run import animate

    engine = make_engine(args)
    bar = Bar()
    try:
        result = animate(engine, request, progress=bar)
    finally:
        bar.close()
    saved = save_animation(result, folder, sha256(Path(result.frames[0].request.model)), name, extras)
    metrics = result.metrics
    if args.json:
        print(json.dumps({**saved, "folder": str(extras or folder)}, indent=2))
        return 0
    for path in saved["videos"].values():
        print(path)
    if "temporal_ssim" in metrics:
        line = (f"{metrics['frames']} frames in {metrics['seconds']:.1f} s: temporal SSIM {metrics['temporal_ssim']:.4f}"
                f" (worst pair {metrics['worst_pair']}: {metrics['temporal_ssim_worst']:.4f}), flicker "
                f"{metrics['flicker']:.4f}")
        if "subject_consistency" in metrics:
            line += f", subject consistency {metrics['subject_consistency']:.4f}"
        print(line)
    return 0
