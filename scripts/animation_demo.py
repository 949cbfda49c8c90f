"""The animation demo with the embedded model: prompt travel, a seed loop and a prompt loop -> docs/animation-*.gif,
a contact sheet and their temporal metrics (docs/animation.json).

    python scripts/animation_demo.py [--out docs] [--scale 4]

Frames are generated at the model's native size (sfumato-scenes: 64 px) and measured there; the GIFs are enlarged
(Lanczos, to 128 px) for the README only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from sfumato.animation import AnimationRequest
from sfumato.animation.run import animate
from sfumato.animation.video import write_video
from sfumato.engine import Engine
from sfumato.requests import GenerationRequest

DEMOS = {
    "travel": dict(prompts={0: "a red apple", 12: "a green apple", 24: "a pear"}, frames=25, seed=7),
    "seed-loop": dict(prompts={0: "a sunflower"}, seeds={0: 1, 8: 2, 16: 3}, loop=True, frames=24, seed=1),
    "prompt-loop": dict(prompts={0: "a heart", 8: "a star", 16: "a fish"}, loop=True, frames=24,
                        seed=3),
}
COMMANDS = {
    "travel": "sfumato animate --keyframes '0: \"a red apple\", 12: \"a green apple\", 24: \"a pear\"' --frames 25 "
              "--seed 7 --sampler Euler",
    "seed-loop": "sfumato animate \"a sunflower\" --seeds '0:(1), 8:(2), 16:(3)' --loop --frames 24 --sampler Euler",
    "prompt-loop": "sfumato animate --keyframes '0: \"a heart\", 8: \"a star\", 16: \"a fish\"' --loop "
                   "--frames 24 --seed 3 --sampler Euler",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--scale", type=int, help="GIF enlargement (default: to 128 px)")
    args = parser.parse_args()
    engine = Engine()
    report, strips = {}, []
    for name, spec in DEMOS.items():
        spec = dict(spec)
        seed = spec.pop("seed")
        request = AnimationRequest(GenerationRequest("", seed=seed, sampler="Euler"), fps=8, formats=[], **spec)
        result = animate(engine, request)
        frames = [f.image for f in result.frames]
        scale = args.scale or max(1, 128 // frames[0].width)
        big = [f.resize((f.width * scale, f.height * scale), Image.Resampling.LANCZOS) for f in frames]
        write_video(big, args.out / f"animation-{name}.gif", request.fps)
        report[name] = {"command": COMMANDS[name], **{k: (round(v, 4) if isinstance(v, float) else v)
                                                      for k, v in result.metrics.items()}}
        strips.append(frames)
        print(f"{name}: {result.metrics}")
    width, side = max(len(s) for s in strips), strips[0][0].width
    sheet = Image.new("RGB", (width * side, len(strips) * side), "white")
    for row, frames in enumerate(strips):
        for col, frame in enumerate(frames):
            sheet.paste(frame, (col * side, row * side))
    sheet = sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.LANCZOS)
    sheet.save(args.out / "animation-frames.png")
    (args.out / "animation.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
