"""Speed of the embedded default model on this machine: load time, time per image at defaults, peak RSS.

    python benchmarks/emoji_speed.py [--images 10]

Targets (issue 4): one image at defaults <= 0.5 s on a 2-core CPU, model load <= 3 s, peak RSS <= 1 GB.
Prints each measurement with its ratio to the target (< 1.0 meets it).

Phases are timed the way A1111 reports them ("Startup time: import torch … / Model loaded in …"):
`import_s` imports the libraries the loader uses (diffusers' model and pipeline modules, transformers' BERT), once
per process; `load_s` is the model load proper (config, weights, construction, first-use imports left inside
`Engine.load`); `cold_cli_s` is the wall time of the whole `sfumato generate` command in a fresh process
(interpreter, torch, libraries, model, one image, PNG) — what a user waits for once.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"load_s": 3.0, "image_s": 0.5, "peak_rss_mb": 1024.0}


def cold_cli_seconds() -> float:
    """Wall time of `sfumato generate "red apple"` in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sfumato.cli", "generate", "red apple", "-o", os.path.join(tmp, "a.png")],
                       check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    import torch

    torch_s = time.perf_counter() - started
    started = time.perf_counter()
    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, BertModel  # noqa: F401

    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    import_s = time.perf_counter() - started
    engine = Engine()
    started = time.perf_counter()
    model = engine.load()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    Engine().load()
    reload_s = time.perf_counter() - started
    info = model.info
    engine.generate(GenerationRequest("warm up", seed=0))
    times = []
    for i in range(args.images):
        started = time.perf_counter()
        engine.generate(GenerationRequest("red apple", seed=i))
        times.append(time.perf_counter() - started)
    image_s = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cold_s = cold_cli_seconds()
    family = info.family
    print(f"model {info.name}: {info.native_size}px, {family.default_sampler}, {family.default_steps} steps, "
          f"cfg {family.default_cfg_scale}, {torch.get_num_threads()} threads")
    for name, value in (("load_s", load_s), ("image_s", image_s), ("peak_rss_mb", peak)):
        print(f"{name:12s} {value:8.3f}   target {TARGETS[name]:7.1f}   ratio {value / TARGETS[name]:.2f}")
    print(f"{'reload_s':12s} {reload_s:8.3f}   (a second Engine in the same process)")
    print(f"{'torch_s':12s} {torch_s:8.3f}   (import torch, once per process)")
    print(f"{'import_s':12s} {import_s:8.3f}   (import diffusers' model/pipeline modules and transformers' BERT, once per process)")
    print(f"{'cold_cli_s':12s} {cold_s:8.3f}   (`sfumato generate \"red apple\"` in a fresh process, end to end)")


if __name__ == "__main__":
    main()
