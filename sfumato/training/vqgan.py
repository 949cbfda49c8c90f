"""`sfumato train vqgan`: a vector-quantised autoencoder (VQGAN, Esser et al. 2021) on an image folder.

The model is diffusers' `VQModel` (encoder, a learned codebook with straight-through gradients and the commitment
loss, decoder); the discriminator is a PatchGAN (Isola et al. 2017, the taming-transformers layout), switched on after
`disc_start` steps. Loss: L1 + L2 reconstruction + the codebook/commitment term + `disc_weight` × the hinge
generator loss (no perceptual term: no LPIPS/VGG weights exist offline). Codes unused over the last `restart_every`
steps are restarted on encoder outputs of the current batch (dead-code restart; at the first step every code is,
so the codebook starts on the data). Codebook usage (share of codes
used in the window) and perplexity are logged to `log.csv` and plotted (`codebook.png`); the result is a diffusers
`VQModel` folder `OUTPUT/vqmodel`, with reconstructions of held-out images in `reconstructions.png`.
"""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sfumato.errors import InvalidRequest
from sfumato.training.config import TrainConfig
from sfumato.training.data import load_pixels, scan_folder
from sfumato.training.report import image_grid

DEFAULT_VQ = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "vq_embed_dim": 4, "num_vq_embeddings": 256,
    "block_out_channels": [32, 64, 128], "layers_per_block": 1, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
}


@dataclass
class VQGANSettings:
    codebook_size: int = 256
    disc_start: int = 500  # steps before the discriminator joins
    disc_weight: float = 0.1  # weight of the adversarial term for the autoencoder
    restart_every: int = 100  # dead-code restart window (0: never)
    holdout: float = 0.1  # share of the images kept out of training, for the reconstruction metrics

    def check(self) -> "VQGANSettings":
        if self.codebook_size < 2 or self.codebook_size > 65536:
            raise InvalidRequest("--codebook-size must be 2..65536")
        if self.disc_start < 0 or self.disc_weight < 0 or self.restart_every < 0:
            raise InvalidRequest("--disc-start, --disc-weight and --restart-every must be >= 0")
        if not 0 <= self.holdout < 1:
            raise InvalidRequest("--holdout must be in [0, 1)")
        return self


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4×4 convolutions down to a map of real/fake logits, one per overlapping patch."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        current = width
        for index in range(1, layers):
            out = width * min(2 ** index, 8)
            blocks += [nn.Conv2d(current, out, 4, 2 if index < layers - 1 else 1, 1, bias=False),
                       nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            current = out
        blocks.append(nn.Conv2d(current, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def codebook_stats(counts: torch.Tensor) -> tuple[float, float]:
    """(share of codes used, perplexity = exp(entropy of the code histogram)) of a window's code counts."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


def restart_dead_codes(codebook: nn.Embedding, counts: torch.Tensor, encodings: torch.Tensor) -> int:
    """Codes unused in the window take the values of random encoder outputs (`encodings`: [N, dim]); how many."""
    dead = (counts == 0).nonzero().flatten()
    if len(dead) == 0 or len(encodings) == 0:
        return 0
    picks = encodings[torch.randint(len(encodings), (len(dead),))]
    with torch.no_grad():
        codebook.weight[dead] = picks.detach() + 1e-3 * torch.randn_like(picks)
    return len(dead)


def reconstruct(model, pixels: torch.Tensor, vq: bool = True) -> torch.Tensor:
    """Images in [-1, 1] through the autoencoder (a VQModel, or an AutoencoderKL's posterior mode)."""
    with torch.no_grad():
        out = []
        for i in range(0, len(pixels), 64):
            batch = pixels[i:i + 64]
            if vq:
                quant, _, _ = model.quantize(model.encode(batch).latents)
                out.append(model.decode(quant, force_not_quantize=True).sample)
            else:
                out.append(model.decode(model.encode(batch).latent_dist.mode()).sample)
        return torch.cat(out).clamp(-1, 1)


def train_vqgan(config: TrainConfig, settings: VQGANSettings | None = None,
                say: Callable[[str], None] = print) -> Path:
    """Train a VQGAN; returns the saved `OUTPUT/vqmodel` folder. Writes log.csv, codebook.png, reconstructions.png
    and metrics.json (held-out PSNR/SSIM, codebook usage and perplexity)."""
    import json

    from diffusers import VQModel
    from tqdm import tqdm

    from sfumato.evaluation.metrics import psnr, ssim
    from sfumato.pipelines.steps import to_pil

    settings = (settings or VQGANSettings()).check()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    dataset = scan_folder(Path(config.data))
    examples = list(dataset.examples)
    rng.shuffle(examples)
    held = max(1, int(len(examples) * settings.holdout)) if settings.holdout and len(examples) > 1 else 0
    heldout, train_set = examples[:held], examples[held:]
    if not train_set:
        raise InvalidRequest("no training images left after the held-out share")
    pixels = torch.stack([load_pixels(e.path, config.resolution, config.resolution) for e in train_set])
    held_pixels = torch.stack([load_pixels(e.path, config.resolution, config.resolution) for e in heldout]) \
        if heldout else pixels[:8]
    model = VQModel.from_config({**DEFAULT_VQ, "num_vq_embeddings": settings.codebook_size,
                                 "sample_size": config.resolution})
    disc = PatchDiscriminator()
    opt_ae = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.learning_rate, betas=(0.5, 0.9))
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    factor = 2 ** (len(DEFAULT_VQ["block_out_channels"]) - 1)
    say(f"VQGAN: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, codebook "
        f"{settings.codebook_size}×{DEFAULT_VQ['vq_embed_dim']}, latent x{factor}; {len(train_set)} training and "
        f"{len(heldout)} held-out images at {config.resolution}px")
    counts = torch.zeros(settings.codebook_size)
    rows, restarted = [], 0
    bar = tqdm(total=config.steps, unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    model.train()
    for step in range(1, config.steps + 1):
        batch = pixels[torch.tensor(rng.sample(range(len(pixels)), min(config.batch_size, len(pixels))))]
        if config.flip:
            batch = torch.where(torch.rand(len(batch), 1, 1, 1) < 0.5, batch.flip(-1), batch)
        h = model.encode(batch).latents
        if step == 1:  # every code starts on an encoder output (a codebook far from the data leaves codes unused)
            restart_dead_codes(model.quantize.embedding, counts, h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1]))
        quant, codebook_loss, (_, _, indices) = model.quantize(h)
        recon = model.decode(quant, force_not_quantize=True).sample
        rec_loss = F.l1_loss(recon, batch) + F.mse_loss(recon, batch)
        adversarial = step > settings.disc_start
        g_loss = -disc(recon).mean() if adversarial else torch.zeros(())
        loss = rec_loss + codebook_loss + settings.disc_weight * g_loss
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        opt_ae.step()
        d_loss = torch.zeros(())
        if adversarial:  # hinge loss on real images and (detached) reconstructions
            d_loss = 0.5 * (F.relu(1 - disc(batch)).mean() + F.relu(1 + disc(recon.detach())).mean())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        counts += torch.bincount(indices.flatten(), minlength=settings.codebook_size).float()
        usage, perplexity = codebook_stats(counts)
        row = {"step": step, "reconstruction": rec_loss.item(), "codebook": codebook_loss.item(),
               "generator": g_loss.item(), "discriminator": d_loss.item(), "usage": usage,
               "perplexity": perplexity, "restarted": 0}
        if settings.restart_every and step % settings.restart_every == 0:
            flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            row["restarted"] = restart_dead_codes(model.quantize.embedding, counts, flat)
            restarted += row["restarted"]
            counts.zero_()
        rows.append(row)
        bar.set_postfix(rec=f"{rec_loss.item():.4f}", usage=f"{usage:.2f}", ppl=f"{perplexity:.1f}")
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - started
    model.eval()
    recon = reconstruct(model, held_pixels)
    with torch.no_grad():
        _, _, (_, _, codes) = model.quantize(model.encode(held_pixels).latents)
    usage, perplexity = codebook_stats(torch.bincount(codes.flatten(), minlength=settings.codebook_size).float())
    real, fake = to_pil(held_pixels / 2 + 0.5), to_pil(recon / 2 + 0.5)
    metrics = {"psnr": sum(psnr(a, b) for a, b in zip(real, fake)) / len(real),
               "ssim": sum(ssim(a, b) for a, b in zip(real, fake)) / len(real),
               "heldout_images": len(heldout), "heldout_files": [str(e.path) for e in heldout],
               "heldout_codebook_usage": usage,
               "heldout_perplexity": perplexity, "codes_restarted": restarted, "steps": config.steps,
               "seconds": round(seconds, 1), "codebook_size": settings.codebook_size, "latent_factor": factor}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(run_dir / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, run_dir / "codebook.png")
    pairs = [img for pair in zip(real[:16], fake[:16]) for img in pair]
    image_grid(pairs, columns=min(16, len(pairs))).save(run_dir / "reconstructions.png")
    out = run_dir / "vqmodel"
    model.save_pretrained(str(out), safe_serialization=True)
    say(f"saved {out}: held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}, codebook usage "
        f"{usage:.0%} (perplexity {perplexity:.1f}), {restarted} codes restarted")
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["reconstruction"] for r in rows], label="reconstruction (L1+L2)")
    axes[0].plot(steps, [r["codebook"] for r in rows], label="codebook + commitment")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r["generator"] for r in rows], label="generator (hinge)")
    axes[1].plot(steps, [r["discriminator"] for r in rows], label="discriminator (hinge)")
    axes[1].legend(fontsize=7)
    axes[2].plot(steps, [r["usage"] for r in rows], label="codebook usage (window)")
    ax2 = axes[2].twinx()
    ax2.plot(steps, [r["perplexity"] for r in rows], color="tab:red", label="perplexity")
    axes[2].legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kl_baseline(vae_path: Path, heldout: torch.Tensor) -> dict[str, float]:
    """Held-out PSNR/SSIM of a KL autoencoder (AutoencoderKL folder), for the comparison at equal latent size."""
    from diffusers import AutoencoderKL

    from sfumato.evaluation.metrics import psnr, ssim
    from sfumato.pipelines.steps import to_pil

    vae = AutoencoderKL.from_pretrained(str(vae_path), local_files_only=True).eval()
    real, fake = to_pil(heldout / 2 + 0.5), to_pil(reconstruct(vae, heldout, vq=False) / 2 + 0.5)
    return {"psnr": sum(psnr(a, b) for a, b in zip(real, fake)) / len(real),
            "ssim": sum(ssim(a, b) for a, b in zip(real, fake)) / len(real),
            "latent_factor": 2 ** (len(vae.config.block_out_channels) - 1),
            "latent_channels": vae.config.latent_channels}
