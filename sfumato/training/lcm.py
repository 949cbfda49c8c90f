"""`sfumato train lcm`: latent consistency distillation (Luo et al. 2023, "Latent Consistency Models"; LCM-LoRA,
Luo et al. 2023b), the recipe of diffusers' `train_lcm_distill_*` scripts.

The teacher is the base model with classifier-free guidance at a fixed scale (`lcm_guidance`). For a noisy latent
at a timestep of the skipping-step DDIM schedule (`lcm_ddim_steps`, 50: steps of k = 20), the teacher takes one
guided DDIM step back by k; the student's consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0_pred must
agree with the target network's f at that earlier point (pseudo-Huber loss). The target is an EMA of the student
(`lcm_target_decay`) for a full model, or the student itself without gradients for a LoRA (`lcm_form`). The result
runs with the LCM sampler in 2–8 steps at CFG 1: a model folder whose `sfumato.json` says `"preset": "lcm"`, or
an LCM-LoRA whose files carry `sfumato.preset = lcm` (in diffusers and kohya layouts).
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from sfumato.training.config import TrainConfig
from sfumato.training.setup import Method

HUBER_C = 0.001
SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0  # as diffusers' LCMScheduler, so training and sampling agree


class DDIMSolver:
    """The skipping-step DDIM schedule and one DDIM step back along it."""

    def __init__(self, alphas_cumprod: torch.Tensor, train_timesteps: int = 1000, ddim_steps: int = 50):
        self.step = train_timesteps // ddim_steps
        self.timesteps = torch.arange(1, ddim_steps + 1) * self.step - 1
        self.alpha = alphas_cumprod[self.timesteps]
        self.alpha_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        prev = self.alpha_prev[index].to(x0).view(-1, 1, 1, 1)
        return prev.sqrt() * x0 + (1 - prev).sqrt() * eps


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip, c_out of the consistency parameterisation (f = x at t = 0)."""
    scaled = TIMESTEP_SCALING * timesteps.float()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def x0_and_eps(output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, prediction_type: str,
               alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = alphas_cumprod.to(sample.device)[timesteps].sqrt().view(-1, 1, 1, 1).to(sample)
    sigma = (1 - alphas_cumprod.to(sample.device)[timesteps]).sqrt().view(-1, 1, 1, 1).to(sample)
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * output, alpha * output + sigma * sample
    return (sample - sigma * output) / alpha, output


class Distiller:
    """The LCD loss over one batch, with the teacher and target networks it needs."""

    def __init__(self, setup, config: TrainConfig, lora: bool):
        scheduler = setup.noise_scheduler
        self.setup, self.config, self.lora = setup, config, lora
        self.alphas = scheduler.alphas_cumprod.float()
        self.solver = DDIMSolver(self.alphas, scheduler.config.num_train_timesteps, config.lcm_ddim_steps)
        self.prediction_type = config.prediction_type or scheduler.config.prediction_type
        unet = setup.pipe.unet
        self.teacher = None if lora else copy.deepcopy(unet).requires_grad_(False).eval()
        self.target = None  # full form: copied from the student at the first step (a resumed run: its weights)

    @contextlib.contextmanager
    def _teacher(self):
        if self.lora:
            unet = self.setup.pipe.unet
            unet.disable_adapters()
            try:
                yield unet
            finally:
                unet.enable_adapters()
        else:
            yield self.teacher

    def update_target(self) -> None:
        if self.lora or self.target is None:
            return
        decay = self.config.lcm_target_decay
        with torch.no_grad():
            for target, live in zip(self.target.parameters(), self.setup.pipe.unet.parameters()):
                target.mul_(decay).add_(live.detach(), alpha=1 - decay)

    def loss(self, latents, embeds, pooled, uncond, uncond_pooled, width: int, height: int) -> torch.Tensor:
        setup, solver = self.setup, self.solver
        index = torch.randint(0, len(solver.timesteps), (latents.shape[0],))
        start = solver.timesteps[index].to(latents.device)
        earlier = (start - solver.step).clamp(min=0)
        noise = torch.randn_like(latents)
        noisy = setup.noise_scheduler.add_noise(latents, noise, start)
        c_skip_start, c_out_start = boundary_scalings(start)
        c_skip, c_out = boundary_scalings(earlier)
        output = setup.predict(noisy, start, embeds, pooled, width, height)
        x0, _ = x0_and_eps(output, start, noisy, self.prediction_type, self.alphas)
        student = c_skip_start * noisy + c_out_start * x0
        with torch.no_grad():
            w = self.config.lcm_guidance - 1.0  # x0 = cond + w (cond - uncond): CFG at scale lcm_guidance
            with self._teacher() as teacher:
                cond = setup.predict(noisy, start, embeds, pooled, width, height, unet=teacher)
                free = setup.predict(noisy, start, uncond, uncond_pooled, width, height, unet=teacher)
            cond_x0, cond_eps = x0_and_eps(cond, start, noisy, self.prediction_type, self.alphas)
            free_x0, free_eps = x0_and_eps(free, start, noisy, self.prediction_type, self.alphas)
            x_prev = solver.ddim_step(cond_x0 + w * (cond_x0 - free_x0), cond_eps + w * (cond_eps - free_eps),
                                      index)
            if not self.lora and self.target is None:
                self.target = copy.deepcopy(setup.pipe.unet).requires_grad_(False).eval()
            target_net = self.target if not self.lora else setup.pipe.unet
            out_prev = setup.predict(x_prev, earlier, embeds, pooled, width, height, unet=target_net)
            x0_prev, _ = x0_and_eps(out_prev, earlier, x_prev, self.prediction_type, self.alphas)
            target = c_skip * x_prev + c_out * x0_prev
        return (torch.sqrt((student.float() - target.float()) ** 2 + HUBER_C**2) - HUBER_C).mean()


class LatentConsistency(Method):
    """The distiller's consistency loss instead of noise prediction, its target network updated after each step,
    validation with the LCM sampler; saved as an LCM-LoRA (tagged) or a full model declaring the `lcm` preset."""

    validation_preset = "lcm"

    def __init__(self, distiller: Distiller, lora: bool, settings: dict):
        self.distiller, self.lora, self.settings = distiller, lora, settings
        self.loss = distiller.loss

    def after_step(self, setup) -> None:
        self.distiller.update_target()

    def save(self, setup, config: TrainConfig, run_dir: Path) -> Path:
        from sfumato.models.folder import save_model_folder
        from sfumato.training.setup import save_lora

        if self.lora:
            return _mark_lora(save_lora(setup, run_dir))
        return save_model_folder(setup.pipe, run_dir / "model", self.settings)


def build_lcm(config: TrainConfig, device: torch.device, say: Callable[[str], None]):
    from sfumato.training.setup import add_lora, load_base, unet_setup

    _, loaded = load_base(config, device)
    setup = unet_setup(config, device, loaded)
    lora = config.lcm_form == "lora"
    if lora:
        setup.extra["rank"] = config.rank
        add_lora(setup, config)
    setup.method = LatentConsistency(Distiller(setup, config, lora), lora,
                                     {**(setup.info.settings or {}), "preset": "lcm"})
    trainable = sum(p.numel() for p in setup.trainable.values())
    say(f"latent consistency distillation ({config.lcm_form}): teacher CFG {config.lcm_guidance:g}, "
        f"{config.lcm_ddim_steps}-step DDIM solver, {trainable / 1e6:.3f}M trainable parameters")
    return setup


def _mark_lora(path: Path) -> Path:
    """Tag both LoRA files as LCM-LoRA, so `--lora` picks the LCM sampler settings by itself."""
    for file in (path, path.parent / "lora-kohya.safetensors"):
        from safetensors import safe_open

        with safe_open(str(file), "pt") as handle:
            metadata = dict(handle.metadata() or {})
        metadata.update({"sfumato.preset": "lcm", "format": metadata.get("format", "pt")})
        save_file(load_file(str(file)), str(file), metadata=metadata)
    (path.parent / "sfumato.json").write_text(json.dumps({"preset": "lcm"}) + "\n")
    return path
