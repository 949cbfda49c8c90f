"""Cost of the image safety check (Open-NSFW via onnxruntime) per 512 px image, and of the prompt policy.

    python benchmarks/safety_cost.py [--repeats 20]

Target (issue 7): the image check adds <= 100 ms per 512 px image on a 2-core CPU. Prints the median
time of one check (and per image in a batch of 4) with its ratio to the target (< 1.0 meets it), and
the time of the prompt policy check.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

TARGET_MS = 100.0


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm up (session creation, first-run allocations)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from sfumato.safety.classifier import nsfw_scores
    from sfumato.safety.policy import PromptPolicy

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
    one = _median_ms(lambda: nsfw_scores([image]), args.repeats)
    four = _median_ms(lambda: nsfw_scores([image] * 4), max(3, args.repeats // 4)) / 4
    policy = PromptPolicy.load()
    prompt = "a photograph of an astronaut riding a horse on the moon, highly detailed, 8k, (masterpiece:1.2)"
    policy_ms = _median_ms(lambda: policy.category_of(prompt), args.repeats * 10)
    print(f"image check, 1 image of 512 px: {one:7.1f} ms  (ratio to the {TARGET_MS:g} ms target: {one / TARGET_MS:.2f})")
    print(f"image check, per image in a batch of 4: {four:7.1f} ms  (ratio {four / TARGET_MS:.2f})")
    print(f"prompt policy check (default policy): {policy_ms:7.3f} ms")


if __name__ == "__main__":
    main()
