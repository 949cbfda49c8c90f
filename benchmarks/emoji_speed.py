"""Speed of the embedded default model on this machine: load time, time per image at defaults, peak RSS.

    python benchmarks/emoji_speed.py [--images 10]

Targets (issue 4): one image at defaults <= 0.5 s on a 2-core CPU, model load <= 3 s, peak RSS <= 1 GB.
Prints each measurement with its ratio to the target (< 1.0 meets it). Load time is measured from a
fresh `Engine` (first load in this process, libraries already imported).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

TARGETS = {"load_s": 3.0, "image_s": 0.5, "peak_rss_mb": 1024.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    import torch  # noqa: F401  (import cost is not model load cost)

    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    engine = Engine()
    started = time.perf_counter()
    model = engine.load()
    load_s = time.perf_counter() - started  # first load: diffusers/transformers modules import lazily in here
    started = time.perf_counter()
    Engine().load()
    reload_s = time.perf_counter() - started  # a second engine in the same process: weights and construction only
    info = model.info
    engine.generate(GenerationRequest("warm up", seed=0))
    times = []
    for i in range(args.images):
        started = time.perf_counter()
        engine.generate(GenerationRequest("red apple", seed=i))
        times.append(time.perf_counter() - started)
    image_s = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    family = info.family
    print(f"model {info.name}: {info.native_size}px, {family.default_sampler}, {family.default_steps} steps, "
          f"cfg {family.default_cfg_scale}, {torch.get_num_threads()} threads")
    for name, value in (("load_s", load_s), ("image_s", image_s), ("peak_rss_mb", peak)):
        print(f"{name:12s} {value:8.3f}   target {TARGETS[name]:7.1f}   ratio {value / TARGETS[name]:.2f}")
    print(f"{'reload_s':12s} {reload_s:8.3f}   (second Engine in the same process: no module imports)")


if __name__ == "__main__":
    main()
