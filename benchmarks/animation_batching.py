"""Animation frames one at a time vs batched through `generate_many`, side by side in one run (embedded model,
defaults): story frames (own prompts) and prompt + seed travel frames (own directions and subseed strengths).

    python benchmarks/animation_batching.py [--mode story|travel] [--scenes 8] [--rounds 2]

Prints frames/s of each and the ratio, and the largest pixel difference between the two sets of frames (batching
must not change the images beyond float rounding). Any error stops it before a ratio is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SCENES = ["in a forest", "on a beach", "in the snow", "at night", "in a city", "on the moon", "in the rain",
          "at a party", "under the sea", "in the desert", "in space", "on a mountain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["story", "travel"], default="story")
    parser.add_argument("--scenes", type=int, default=8, help="frames")
    parser.add_argument("--rounds", type=int, default=2, help="the two ways take turns this many times")
    args = parser.parse_args()
    from sfumato.animation import run
    from sfumato.animation.request import AnimationRequest
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    engine = Engine()
    if args.mode == "story":
        request = AnimationRequest(GenerationRequest(prompt="", seed=7), mode="story", frames=args.scenes,
                                   subject="a red robot", scenes=(SCENES * 2)[:args.scenes])
    else:
        request = AnimationRequest(GenerationRequest(prompt="", seed=7), frames=args.scenes, formats=[],
                                   prompts={0: "red apple", args.scenes - 1: "green apple"},
                                   seeds={0: 7, args.scenes - 1: 8})
    engine.generate(GenerationRequest(prompt="warm up", seed=1))
    batched_render = run._render_together

    def one_at_a_time(engine_, requests, tracker, chunk=8):
        return list(run._render(engine_, requests, tracker))

    times = {"one at a time": [], "batched": []}
    frames = {}
    for _ in range(args.rounds):
        for name, render in (("one at a time", one_at_a_time), ("batched", batched_render)):
            run._render_together = render
            started = time.perf_counter()
            result = run.animate(engine, request)
            times[name].append(time.perf_counter() - started)  # what a user waits for, measuring included
            frames[name] = [np.asarray(f.image, dtype=np.int16) for f in result.frames]
    run._render_together = batched_render
    diff = max(int(np.abs(a - b).max()) for a, b in zip(frames["one at a time"], frames["batched"]))
    rate = {name: args.scenes / min(values) for name, values in times.items()}
    for name, value in rate.items():
        print(f"{name:14s} {value:6.2f} frames/s (best of {args.rounds})")
    print(f"batched / one at a time: {rate['batched'] / rate['one at a time']:.2f}x; largest pixel difference {diff}")


if __name__ == "__main__":
    main()
