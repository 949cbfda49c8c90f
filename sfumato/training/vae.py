"""`sfumato train vae`: a small AutoencoderKL trained on an image folder (L1 + KL), resumable.

Images are centre-cropped and resized to `resolution` squares. The result is a diffusers
AutoencoderKL folder whose `scaling_factor` is set from the data (1 / std of the latents), as the
LDM paper does, so a UNet trained on it sees unit-variance latents.

With `--vae DIR` training goes on from that VAE's weights; with `--decoder-only` too, the encoder is frozen, so the
latent space (and the scaling factor) stay as they were and a UNet already trained on DIR's latents keeps working
with the sharper decoder — what Stable Diffusion's ft-EMA/ft-MSE decoders did.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sfumato.errors import InvalidRequest
from sfumato.training import checkpoints as ckpt
from sfumato.training.config import TrainConfig
from sfumato.training.data import load_pixels, scan_folder
from sfumato.training.report import TrainLog, image_grid

DEFAULT_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": [32, 64, 128], "layers_per_block": 1, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
}


def _crops(batch: torch.Tensor, crop: int | None, rng: random.Random) -> torch.Tensor:
    """Random `crop`×`crop` windows (one per image): a convolutional VAE learns as well from crops, 4x cheaper at half
    the side, and still works on the whole image."""
    side = batch.shape[-1]
    if not crop or crop >= side:
        return batch
    out = []
    for image in batch:
        y, x = rng.randrange(side - crop + 1), rng.randrange(side - crop + 1)
        out.append(image[:, y:y + crop, x:x + crop])
    return torch.stack(out)


def train_vae(config: TrainConfig, vae_config: str | None = None, kl_weight: float = 1e-6,
              say: Callable[[str], None] = print, crop: int | None = None, decoder_only: bool = False) -> Path:
    """Train (or resume) an AutoencoderKL; returns the saved folder `OUTPUT/vae`. With `crop`, each step trains on
    random crops of that side of the `resolution` images; from `config.vae`'s weights when given, with only the
    decoder learning when `decoder_only`."""
    from diffusers import AutoencoderKL
    from diffusers.optimization import get_scheduler
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    dataset = scan_folder(Path(config.data))
    if dataset.skipped:
        say(f"skipped {len(dataset.skipped)} unreadable images")
    try:
        settings = {**DEFAULT_VAE, **(json.loads(Path(vae_config).read_text()) if vae_config else {})}
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read VAE config {vae_config}: {exc}") from None
    settings["sample_size"] = config.resolution
    if decoder_only and not config.vae:
        raise InvalidRequest("--decoder-only fine-tunes an existing VAE's decoder: give it with --vae DIR")
    if config.vae:
        try:
            vae = AutoencoderKL.from_pretrained(config.vae)
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot load the VAE {config.vae}: {exc}") from None
    else:
        vae = AutoencoderKL.from_config(settings)
    if decoder_only:
        for module in (vae.encoder, vae.quant_conv):
            if module is not None:
                module.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.steps)
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    say(f"VAE: {sum(p.numel() for p in params) / 1e6:.2f}M parameters trained{' (decoder only)' * decoder_only}, "
        f"{len(dataset.examples)} images at {config.resolution}px, latent x{factor}")
    pixels = torch.stack([load_pixels(e.path, config.resolution, config.resolution) for e in dataset.examples])
    step, losses, rng = 0, [], random.Random(config.seed)
    latest = ckpt.latest_checkpoint(run_dir) if config.resume else None
    if latest is not None:
        trainable, _, opt_tensors, state = ckpt.load_checkpoint(latest)
        vae.load_state_dict(trainable)
        ckpt.load_optimizer(optimizer, opt_tensors, state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        ckpt.restore_rng(opt_tensors, state["rng"])
        ckpt.random_from_json(state["py_rng"], rng)
        step, losses = state["step"], state["losses"]
        say(f"resumed from {latest.name} (step {step})")
    log = TrainLog(run_dir)
    log.truncate(step)
    bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True)
    started, seen = time.perf_counter(), 0
    vae.train()
    if decoder_only:
        vae.encoder.eval()
    while step < config.steps:
        batch = pixels[torch.tensor(rng.sample(range(len(pixels)), min(config.batch_size, len(pixels))))]
        if config.flip:
            batch = torch.where(torch.rand(len(batch), 1, 1, 1) < 0.5, batch.flip(-1), batch)
        batch = _crops(batch, crop, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16"):
            with torch.set_grad_enabled(not decoder_only):
                posterior = vae.encode(batch).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon.float(), batch)
        if not decoder_only:
            loss = loss + kl_weight * posterior.kl().float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        step += 1
        seen += len(batch)
        losses.append(loss.item())
        rate = seen / max(time.perf_counter() - started, 1e-9)
        log.row(step, loss.item(), lr_scheduler.get_last_lr()[0], 0, rate)
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}")
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == config.steps:
            extra = {"losses": losses, "py_rng": ckpt.random_to_json(rng)}
            ckpt.save_checkpoint(run_dir, step, dict(vae.state_dict()), None, optimizer, lr_scheduler, extra,
                                 config.keep_checkpoints)
    bar.close()
    vae.eval()
    with torch.no_grad():
        if not decoder_only:  # the latent space is the given VAE's: so is its scale
            latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mode()
                                 for i in range(0, len(pixels), 256)])
            vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        sample = pixels[:32]
        recon = vae.decode(vae.encode(sample).latent_dist.mode()).sample
        error = F.l1_loss(recon, sample).item()
    from sfumato.pipelines.steps import to_pil

    pairs = [img for pair in zip(to_pil(sample / 2 + 0.5), to_pil((recon / 2 + 0.5).clamp(0, 1))) for img in pair]
    image_grid(pairs, columns=16).save(run_dir / "reconstructions.png")
    log.loss_curve(losses)
    out = run_dir / "vae"
    vae.save_pretrained(str(out), safe_serialization=True)
    say(f"saved {out} (scaling_factor {vae.config.scaling_factor:.4f}, L1 reconstruction error {error:.4f})")
    return out
