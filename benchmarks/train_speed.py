"""Training throughput of the embedded-model configuration, with and without cached features.

    python benchmarks/train_speed.py [--data EMOJI_DATA] [--steps 30] [--batch-size 64]

Trains the sfumato-emoji UNet recipe (32 px, VAE x4, MiniLM text encoder, `models/configs/emoji`) from
scratch for a few steps twice — once on cached latents + text embeddings, once encoding every batch
with the VAE and the text encoder — and prints images/s for both and their ratio. Without --data it
uses 256 synthetic captioned images. The first (cache-filling) pass is timed separately.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sfumato.training.config import TrainConfig
from sfumato.training.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "sfumato" / "models" / "configs" / "emoji"


def synthetic_data(folder: Path, count: int = 256) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"synthetic image number {i}")
    return folder


def random_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    from sfumato.training.vae import DEFAULT_VAE

    settings = {**DEFAULT_VAE, **json.loads((CONFIGS / "vae.json").read_text()), "sample_size": 32}
    AutoencoderKL.from_config(settings).save_pretrained(str(folder))
    return folder


def run(data: Path, work: Path, vae: Path, cache: bool, steps: int, batch: int) -> float:
    config = TrainConfig(method="scratch", data=str(data), output=str(work / f"run-{cache}"), steps=steps,
                         batch_size=batch, resolution=32, buckets=False, cache=cache, cache_dir=str(work / "cache"),
                         unet_config=str(CONFIGS / "unet.json"), vae=str(vae), text_encoder="minilm",
                         text_chunk_length=30, checkpoint_every=10**9, learning_rate=5e-4)
    return train(config, say=lambda _: None).images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or synthetic_data(work / "data")
        vae = random_vae(work / "vae")
        started = time.perf_counter()
        run(data, work, vae, True, 1, args.batch_size)  # fills the cache
        fill = time.perf_counter() - started
        cached = run(data, work, vae, True, args.steps, args.batch_size)
        uncached = run(data, work, vae, False, args.steps, args.batch_size)
    print(f"cache fill (first run, 1 step): {fill:.1f} s")
    print(f"cached features:   {cached:7.1f} images/s")
    print(f"encode every step: {uncached:7.1f} images/s")
    print(f"ratio cached/uncached: {cached / uncached:.2f}x")


if __name__ == "__main__":
    main()
