"""VQGAN vs our KL autoencoder at equal latent size, on held-out emoji renders (CPU).

    python scripts/vqgan_study.py [--data /work/data/emoji] [--steps 1500] [--out docs]

Trains `sfumato train vqgan` (codebook 256 × 4, latent ×4: 8×8 codes for 32 px) on the emoji dataset (`sfumato data
emoji DIR`), then reconstructs its held-out images with the VQGAN and with the shipped sfumato-emoji VAE (KL, 4
channels, latent ×4: the same 8×8 latent grid). Writes OUT/vqgan-study.json, OUT/vqgan-codebook.png (losses, codebook
usage, perplexity) and OUT/vqgan-reconstructions.png (rows: original | VQGAN | KL).
Note: the KL VAE was trained on every emoji, the held-out ones included; the VQGAN never saw them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfumato.models.embedded import embedded_model  # noqa: E402
from sfumato.training.config import TrainConfig  # noqa: E402
from sfumato.training.data import load_pixels  # noqa: E402
from sfumato.training.vqgan import VQGANSettings, kl_baseline, reconstruct, train_vqgan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/data/emoji"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vqgan-study"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    config = TrainConfig(method="full", data=str(args.data), output=str(args.work), steps=args.steps,
                         batch_size=args.batch_size, resolution=32, learning_rate=3e-4, seed=0, flip=False)
    settings = VQGANSettings(codebook_size=256, disc_start=args.steps // 2, disc_weight=0.1, restart_every=200,
                             holdout=0.05)
    folder = train_vqgan(config, settings)
    metrics = json.loads((args.work / "metrics.json").read_text())
    # the same held-out images, through the KL VAE of the shipped model
    from diffusers import VQModel

    held = metrics.pop("heldout_files")
    pixels = torch.stack([load_pixels(Path(p), 32, 32) for p in held])
    kl = kl_baseline(embedded_model() / "vae", pixels)
    result = {"vqgan": metrics, "kl_vae": kl, "heldout_images": len(held),
              "command": f"python scripts/vqgan_study.py --steps {args.steps}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vqgan-study.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(args.work / "codebook.png", args.out / "vqgan-codebook.png")
    from sfumato.pipelines.steps import to_pil
    from sfumato.training.report import image_grid

    vq = VQModel.from_pretrained(str(folder)).eval()
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(embedded_model() / "vae")).eval()
    sample = pixels[:12]
    rows = [to_pil(sample / 2 + 0.5), to_pil(reconstruct(vq, sample) / 2 + 0.5),
            to_pil(reconstruct(vae, sample, vq=False) / 2 + 0.5)]
    image_grid([im.resize((64, 64)) for row in rows for im in row], columns=len(sample)).save(
        args.out / "vqgan-reconstructions.png")
    print(json.dumps({"vqgan_psnr": metrics["psnr"], "vqgan_ssim": metrics["ssim"],
                      "codebook_usage": metrics["heldout_codebook_usage"], "kl_psnr": kl["psnr"],
                      "kl_ssim": kl["ssim"]}, indent=2))


if __name__ == "__main__":
    main()
