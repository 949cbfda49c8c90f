"""The training loop shared by every method: data -> cached features -> noise-prediction loss -> checkpoints.

Built on accelerate, so `accelerate launch -m sfumato.cli train ...` runs it on several processes
unchanged: every process reads the same deterministic batch order and trains on its slice of each batch.
"""

from __future__ import annotations

import gc
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sfumato.errors import InvalidRequest
from sfumato.models import home
from sfumato.training import checkpoints as ckpt
from sfumato.training.buckets import BucketPlan, epoch_batches, make_buckets, plan_buckets
from sfumato.training.cache import CacheStats, cache_key, cached_latents, cached_texts, weights_fingerprint
from sfumato.training.config import TrainConfig
from sfumato.training.data import Dataset, load_pixels, shuffle_tags
from sfumato.training.methods import build_setup
from sfumato.training.setup import TrainSetup, encode_captions
from sfumato.training.report import TrainLog
from sfumato.training.validation import RetrievalProbe

ProgressCallback = Callable[[dict], None]


@dataclass
class TrainResult:
    output: Path  # the trained artifact (model folder, LoRA file, embedding file)
    steps: int
    losses: list[float]
    images_per_second: float
    dataset_size: int
    skipped: int
    dropped: int
    cache: CacheStats = field(default_factory=CacheStats)
    world_size: int = 1
    main_process: bool = True
    stopped: bool = False  # a signal stopped it early (a checkpoint was saved)


@dataclass
class Features:
    """What a batch needs, per image index: moments of latents and caption rows (or raw captions)."""

    dataset: Dataset
    plan: BucketPlan
    moments: dict[tuple[int, bool], torch.Tensor] | None  # None: encode pixels on the fly
    caption_rows: list[list[int]]  # image index -> rows of `embeds` (caption variants)
    embeds: torch.Tensor | None  # [M, T, D], row 0 is the empty caption; None: encode live
    pooled: torch.Tensor | None
    weights: list[float]  # per-image loss weight (prior preservation)


def parse_size(text: str) -> tuple[int, int]:
    """ "96x64" -> (96, 64)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidRequest(f"bucket size {text!r} is not WIDTHxHEIGHT") from None
    return width, height


def _plan(config: TrainConfig, dataset: Dataset, seed: int) -> BucketPlan:
    sizes = [(ex.width, ex.height) for ex in dataset.examples]
    if config.bucket_sizes:  # an explicit list: the first is the base (remainder) bucket
        buckets = [parse_size(text) for text in config.bucket_sizes]
        return plan_buckets(sizes, buckets, config.batch_size, config.max_aspect_error, seed, base=buckets[0])
    if not config.buckets:
        buckets = [(config.resolution, config.resolution)]
        return plan_buckets(sizes, buckets, config.batch_size, max_aspect_error=float("inf"), seed=seed)
    smallest = min(min(s) for s in sizes) // config.bucket_step * config.bucket_step
    low = config.bucket_min or max(config.bucket_step, min(config.resolution // 2, max(smallest, config.bucket_step)))
    low = min(low, config.resolution)
    buckets = make_buckets(config.resolution, low, config.bucket_step)
    return plan_buckets(sizes, buckets, config.batch_size, config.max_aspect_error, seed)


def _encode_pixels(setup: TrainSetup, dataset: Dataset, plan: BucketPlan, items: list[tuple[int, bool]]) -> torch.Tensor:
    """Moments [B, 2C, h, w] of the VAE posterior for a list of (image, flipped) of one size."""
    vae = setup.pipe.vae
    pixels = torch.stack([load_pixels(dataset.examples[i].path, *plan.sizes[i], flip) for i, flip in items])
    with torch.no_grad():
        return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.parameters


def prepare_features(config: TrainConfig, setup: TrainSetup, dataset: Dataset, weights: list[float],
                     stats: CacheStats, say: Callable[[str], None]) -> Features:
    plan = _plan(config, dataset, config.seed)
    captions = sorted({c for ex in dataset.examples for c in ex.captions} - {""})
    texts = ["", *captions]
    row = {c: i for i, c in enumerate(texts)}
    caption_rows = [[row[c] for c in ex.captions] for ex in dataset.examples]
    if not config.cache:
        return Features(dataset, plan, None, caption_rows, None, None, weights)
    root = Path(config.cache_dir) if config.cache_dir else home.home() / "cache" / "training"
    flips = [False, True] if config.flip else [False]
    items = [(i, f) for size in sorted(plan.groups) for i in plan.groups[size] for f in flips]
    vae_id = weights_fingerprint(setup.pipe.vae)
    latent_dir = root / cache_key(kind="latents", vae=vae_id, data=dataset.fingerprint(), sizes=plan.sizes, flips=flips)
    say(f"caching latents of {len(items)} images in {latent_dir}")
    moments: dict[tuple[int, bool], torch.Tensor] = {}
    for size in sorted(plan.groups):  # one size per encode batch
        group = [it for it in items if plan.sizes[it[0]] == size]
        sub = latent_dir / f"{size[0]}x{size[1]}"
        moments.update(cached_latents(sub, group, lambda chunk: _encode_pixels(setup, dataset, plan, chunk),
                                      config.batch_size * 4, stats))
    embeds = pooled = None
    if not setup.live_text:
        text_id = "|".join(weights_fingerprint(slot.encoder) for slot in setup.encoder.slots)
        half = config.text_cache_dtype == "float16"
        text_dir = root / cache_key(kind="text", encoder=text_id, captions=texts, chunk=setup.encoder.slots[0].chunk_length,
                                    **({"dtype": "float16"} if half else {}))
        say(f"caching text embeddings of {len(texts)} captions in {text_dir}")
        with torch.no_grad():
            embeds, pooled = cached_texts(text_dir, texts, lambda batch: encode_captions(setup.encoder, batch),
                                          64, stats, torch.float16 if half else torch.float32)
    setup.park_frozen(Path(config.output) / ".parked", keep_text=setup.live_text)
    gc.collect()
    return Features(dataset, plan, moments, caption_rows, embeds, pooled, weights)


def _choose_captions(features: Features, indices: list[int], config: TrainConfig, rng: random.Random) -> list[int]:
    rows = []
    for i in indices:
        rows.append(0 if rng.random() < config.caption_dropout else rng.choice(features.caption_rows[i]))
    return rows


def _batch_latents(setup: TrainSetup, features: Features, indices: list[int], flips: list[bool]) -> torch.Tensor:
    vae_config = setup.vae_config
    if features.moments is not None:
        moments = torch.stack([features.moments[(i, f)] for i, f in zip(indices, flips)])
    else:
        moments = _encode_pixels(setup, features.dataset, features.plan, list(zip(indices, flips))).float().cpu()
    mean, logvar = moments.chunk(2, dim=1)
    sample = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)
    shift = vae_config.get("shift_factor") or 0.0
    return (sample - shift) * vae_config["scaling_factor"]


def loss_for_batch(config: TrainConfig, setup: TrainSetup, features: Features, indices: list[int],
                   rng: random.Random) -> torch.Tensor:
    """The (prior-weighted, optionally min-SNR-weighted) MSE of the noise (or velocity) prediction."""
    flips = [config.flip and rng.random() < 0.5 for _ in indices]
    control = None
    if setup.control_batch is not None:  # augmented ControlNet training: latents and maps of the same warped images
        latents, control = setup.control_batch(features, indices, flips, rng)
    else:
        latents = _batch_latents(setup, features, indices, flips).to(setup.device)
        if setup.control_maps:
            control = setup.control_maps(features, indices, flips)
    rows = _choose_captions(features, indices, config, rng)
    if features.embeds is not None:
        embeds = features.embeds[rows].to(setup.device, torch.float32)
        pooled = features.pooled[rows].to(setup.device, torch.float32) if features.pooled is not None else None
    else:
        texts = [features_caption(features, i, r, config, rng) for i, r in zip(indices, rows)]
        embeds, pooled = encode_captions(setup.encoder, texts)
    height, width = latents.shape[-2] * setup.vae_scale, latents.shape[-1] * setup.vae_scale
    if setup.loss_fn is not None:  # the method's own objective (latent consistency distillation)
        if features.embeds is not None:
            uncond = features.embeds[[0] * len(indices)].to(setup.device, torch.float32)
            uncond_pooled = features.pooled[[0] * len(indices)].to(setup.device, torch.float32) \
                if features.pooled is not None \
                else None
        else:
            uncond, uncond_pooled = encode_captions(setup.encoder, [""] * len(indices))
        return setup.loss_fn(latents, embeds, pooled, uncond, uncond_pooled, width, height)
    scheduler = setup.noise_scheduler
    noise = torch.randn_like(latents)
    if config.noise_offset:
        noise = noise + config.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = config.prediction_type or scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    prediction = setup.predict(noisy, timesteps, embeds, pooled, width, height, control)
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.min_snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        weight = torch.clamp(snr, max=config.min_snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        per_sample = per_sample * weight
    sample_weights = torch.tensor([features.weights[i] for i in indices], device=per_sample.device)
    return (per_sample * sample_weights).sum() / len(indices)


def features_caption(features: Features, index: int, row: int, config: TrainConfig, rng: random.Random) -> str:
    """The caption text for live encoding: dropout -> "", else the chosen variant (tags shuffled if asked)."""
    if row == 0:
        return ""
    caption = rng.choice(features.dataset.examples[index].captions) or ""
    return shuffle_tags(caption, rng, config.keep_tags) if config.shuffle_tags else caption


def train(config: TrainConfig, progress: ProgressCallback | None = None, say: Callable[[str], None] = print) -> TrainResult:
    """Run one training job described by `config`; resumable with `config.resume`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    config.validate()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    quiet = (lambda _: None) if not main else say
    set_seed(config.seed)
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = build_setup(config, accelerator.device, quiet)
    dataset, weights = setup.dataset(config, quiet)
    if dataset.skipped:
        quiet(f"skipped {len(dataset.skipped)} unreadable images: {', '.join(dataset.skipped[:5])}")
    stats = CacheStats()
    if main:
        features = prepare_features(config, setup, dataset, weights, stats, quiet)
    accelerator.wait_for_everyone()
    if not main:
        features = prepare_features(config, setup, dataset, weights, stats, quiet)
    if features.plan.dropped:
        quiet(f"dropped {features.plan.dropped} images whose aspect ratio fits no bucket")
    if config.gradient_checkpointing:
        setup.enable_gradient_checkpointing()
    params = list(setup.trainable.values())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.steps)
    setup.model, optimizer = accelerator.prepare(setup.model, optimizer)
    ema = None
    if config.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)
    step, epoch, position, losses = 0, 0, 0, []
    rng = random.Random(config.seed + rank)
    latest = ckpt.latest_checkpoint(run_dir) if config.resume else None
    if config.resume and latest is None:
        quiet(f"no checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
    if latest is not None:
        trainable, ema_tensors, opt_tensors, state = ckpt.load_checkpoint(latest)
        with torch.no_grad():
            for name, p in setup.trainable.items():
                p.copy_(trainable[name])
        ckpt.load_optimizer(optimizer, opt_tensors, state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if ema is not None and ema_tensors is not None:
            for shadow, name in zip(ema.shadow_params, setup.trainable):
                shadow.copy_(ema_tensors[name])
            ema.optimization_step = state.get("ema_step", step)
        ckpt.restore_rng(opt_tensors, state["rng"])
        ckpt.random_from_json(state["py_rng"], rng)
        step, epoch, position, losses = state["step"], state["epoch"], state["position"], state["losses"]
        quiet(f"resumed from {latest.name} (step {step})")
    log = TrainLog(run_dir, main)
    log.truncate(step)
    validating = bool(config.validate_every and (config.validation_prompts or config.validation_retrieval))
    probe = None
    if main and validating and config.validation_retrieval:
        probe = RetrievalProbe.build(config.validation_retrieval, config.validation_extractor, dataset, features.plan)
    batches = epoch_batches(features.plan, config.batch_size, config.seed, epoch)
    setup.model.train()
    started, seen = time.perf_counter(), 0
    bar = _progress_bar(config.steps, step, main)
    stop = _StopRequest().__enter__()
    try:
        while step < config.steps:
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(config.gradient_accumulation):
                if position >= len(batches):
                    epoch, position = epoch + 1, 0
                    batches = epoch_batches(features.plan, config.batch_size, config.seed, epoch)
                batch = batches[position]
                position += 1
                mine = batch[rank::world] or batch[:1]
                with accelerator.autocast():
                    loss = loss_for_batch(config, setup, features, mine, rng) / config.gradient_accumulation
                accelerator.backward(loss)
                total += loss.item()
                seen += len(batch)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            setup.after_optimizer_step()
            lr_scheduler.step()
            if ema is not None:
                ema.step(params)
            step += 1
            losses.append(total)
            rate = seen / max(time.perf_counter() - started, 1e-9)
            log.row(step, total, lr_scheduler.get_last_lr()[0], epoch, rate)
            if bar is not None:
                bar.set_postfix(loss=f"{total:.4f}", img_s=f"{rate:.1f}", epoch=epoch)
                bar.update(1)
            if progress:
                progress({"step": step, "steps": config.steps, "loss": total, "images_per_second": rate, "epoch": epoch})
            last = step == config.steps
            if main and (step % config.checkpoint_every == 0 or last or stop.asked):
                extra = {"epoch": epoch, "position": position, "losses": losses, "ema_step": ema.optimization_step if ema else 0,
                         "py_rng": ckpt.random_to_json(rng)}
                ema_state = dict(zip(setup.trainable, ema.shadow_params)) if ema else None
                ckpt.save_checkpoint(run_dir, step, setup.trainable, ema_state, optimizer, lr_scheduler, extra,
                                     config.keep_checkpoints)
            if main and validating and (step % config.validate_every == 0 or last):
                with _ema_weights(ema, params):
                    images, scores = setup.validate(config, Path(config.output) / ".parked", probe)
                log.grid(step, images)
                if scores:
                    log.retrieval(step, scores)
                    quiet(f"step {step}: validation retrieval top-1 {scores['top1']:.1%}, top-5 {scores['top5']:.1%} "
                          f"among {scores['examples']} ({scores['extractor']})")
                setup.model.train()
            accelerator.wait_for_everyone()
            if stop.asked:
                break
    finally:
        stop.__exit__()
    if bar is not None:
        bar.close()
    rate = seen / max(time.perf_counter() - started, 1e-9)
    output = run_dir
    if stop.asked:
        quiet(f"stopped at step {step}: checkpoint saved in {run_dir / 'checkpoints'}; continue with --resume")
    elif main:
        with _ema_weights(ema, params):
            output = setup.save_final(config, run_dir)
        log.loss_curve(losses)
    accelerator.wait_for_everyone()
    return TrainResult(output, step, losses, rate, len(dataset.examples), len(dataset.skipped), features.plan.dropped,
                       stats, world, main, stopped=stop.asked)


class _StopRequest:
    """Ctrl-C or SIGTERM while training: finish the step, save a checkpoint, stop (`--resume` continues); a second
    signal stops at once."""

    def __init__(self):
        self.asked = False
        self.previous: dict = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class _ema_weights:
    """Swap EMA weights into the trained parameters inside the block (no-op without EMA)."""

    def __init__(self, ema, params):
        self.ema, self.params = ema, params

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.params)


def _progress_bar(total: int, initial: int, main: bool):
    if not main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
