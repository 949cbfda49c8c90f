"""Reference-only control, as the A1111 ControlNet extension has it: `reference_only`, `reference_adain`,
`reference_adain+attn` — a reference image steers the generation through the UNet itself, no model file needed.

At each step where a reference unit is active, the reference's latents are noised to the step's level
(`sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε`, t rounded, fresh seeded noise each step) and run through the UNet with the
rows' own conditioning, writing what the generation's call then reads:
- attention (`reference_only`, `+attn`): each self-attention's input tokens (`pipelines.shared_attention`);
- AdaIN (`reference_adain`, `+attn`): the per-channel mean and variance of the hidden states after each of A1111's
  GroupNorm points (the middle block, each resnet/transformer pair of every down block but the first, and the
  matching up pairs); the generation's hidden states there get the reference's statistics. A point of weight
  rank g (0 for the middle block, 2·(1 − w/n) down, 2·w/n up) takes part when the unit's weight > g.

Style fidelity (the unit's threshold_a, 0.5 by default) is how far the negative rows stay plain, i.e. how hard CFG
pushes toward the reference; "ControlNet is more important" makes it 1, "My prompt is more important" and the
hires pass make it 0, and SDXL cubes it (the extension's rules). Weight 0, or no active unit at a step, is the
plain call bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from sfumato.control.preprocessors import REFERENCE_MODULES  # noqa: F401  (the module names this implements)
from sfumato.pipelines.shared_attention import AttentionState

CONTROL_KWARGS = ("down_block_additional_residuals", "mid_block_additional_residual",
                  "down_intrablock_additional_residuals")
GROUP_NORM_EPS = 1e-6


@dataclass
class ReferenceUnit:
    """One unit ready for a pass: its settings and its image's latents [1, C, h, w]."""

    module: str
    weight: float
    start: float
    end: float
    fidelity: float
    latents: torch.Tensor

    def active(self, step: int, steps: int) -> bool:
        return self.weight > 0 and not (step / steps < self.start or (step + 1) / steps > self.end)

    @property
    def attention(self) -> bool:
        return self.module in ("reference_only", "reference_adain+attn")

    @property
    def adain(self) -> bool:
        return self.module in ("reference_adain", "reference_adain+attn")


def style_fidelity(threshold_a: float | None, control_mode: str, sdxl: bool, hires: bool) -> float:
    """The extension's effective style fidelity of a unit."""
    if control_mode == "control":
        return 1.0
    if control_mode == "prompt" or hires:
        return 0.0
    fidelity = min(max(0.5 if threshold_a is None else float(threshold_a), 0.0), 1.0)
    return fidelity ** 3 if sdxl else fidelity


def group_norm_points(unet) -> list[tuple[torch.nn.Module, float]]:
    """A1111's AdaIN points in diffusers terms, each with its weight rank: the middle block (0), the resnet or
    resnet+transformer pairs of the down blocks after the first (2·(1 − w/n)), and as many up pairs plus two
    (2·w/n) — SD1's input blocks 4..11 and output blocks 0..7, SDXL's 4..8 and 0..5."""
    def pairs(block) -> list[torch.nn.Module]:
        attentions = getattr(block, "attentions", None)
        return list(attentions) if attentions else list(block.resnets)

    down = [m for block in unet.down_blocks[1:] for m in pairs(block)]
    up = [m for block in unet.up_blocks for m in pairs(block)][:len(down) + 2]
    points = [(unet.mid_block, 0.0)]
    points += [(m, 2 * (1.0 - w / len(down))) for w, m in enumerate(down)]
    points += [(m, 2 * (w / len(up))) for w, m in enumerate(up)]
    return points


def adain_to(x: torch.Tensor, bank: list[tuple[torch.Tensor, torch.Tensor, float]],
             negative_rows: list[int]) -> torch.Tensor:
    """[R, C, H, W] hidden states with each channel's mean and variance replaced by the bank's (averaged over its
    entries); the negative rows blended back toward their own by the entries' mean style fidelity."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    std = torch.clamp(var, min=GROUP_NORM_EPS) ** 0.5
    mean_ref = sum(m for m, _, _ in bank) / len(bank)
    std_ref = torch.clamp(sum(v for _, v, _ in bank) / len(bank), min=GROUP_NORM_EPS) ** 0.5
    fidelity = sum(f for _, _, f in bank) / len(bank)
    moved = (x - mean) / std * std_ref + mean_ref
    if fidelity > 1e-5 and negative_rows:
        plain = moved.clone()
        plain[negative_rows] = x[negative_rows].to(moved.dtype)
        moved = fidelity * plain + (1.0 - fidelity) * moved
    return moved.to(x.dtype)


class GroupNormBanks:
    """Forward hooks at the AdaIN points: store the reference's statistics, or move the generation's to them."""

    def __init__(self, unet, negative_rows: list[int]):
        self.points = group_norm_points(unet)
        self.negative_rows = negative_rows
        self.mode, self.write_weight, self.write_fidelity = "read", -1.0, 0.0
        self.banks: dict[int, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator["GroupNormBanks"]:
        handles = [module.register_forward_hook(self._hook(index, rank))
                   for index, (module, rank) in enumerate(self.points)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int, rank: float):
        def hook(_module, _inputs, output):
            tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            bank = self.banks.setdefault(index, [])
            if self.mode == "write":
                if self.write_weight > rank:
                    var, mean = torch.var_mean(tensor, dim=(2, 3), keepdim=True, correction=0)
                    bank.append((mean, var, self.write_fidelity))
                return None
            if not bank:
                return None
            changed = adain_to(tensor, bank, self.negative_rows)
            bank.clear()
            if isinstance(output, tuple):
                return (changed, *output[1:])
            if hasattr(output, "sample"):
                output.sample = changed
                return output
            return changed
        return hook

class Reference:
    """The reference units of one pass: noises each reference to the step's level and runs the write passes."""

    def __init__(self, units: list[ReferenceUnit], alphas_cumprod: torch.Tensor, attention: AttentionState,
                 group_norms: GroupNormBanks | None, seed: int):
        self.units, self.alphas_cumprod = units, alphas_cumprod
        self.attention, self.group_norms = attention, group_norms
        self.generator = torch.Generator().manual_seed(seed)

    def noised(self, unit: ReferenceUnit, t: torch.Tensor, rows: int) -> torch.Tensor:
        index = int(torch.as_tensor(t).float().flatten()[0].round().clamp(0, len(self.alphas_cumprod) - 1))
        alpha = self.alphas_cumprod[index].item()
        noise = torch.randn(unit.latents.shape, generator=self.generator).to(unit.latents)
        return (alpha ** 0.5 * unit.latents + (1 - alpha) ** 0.5 * noise).expand(rows, -1, -1, -1)

    def write(self, call, model_input: torch.Tensor, t, step: int, steps: int, kwargs: dict) -> bool:
        """Run the active units' reference passes (no ControlNet residuals); False when none is active."""
        active = [unit for unit in self.units if unit.active(step, steps)]
        if not active:
            return False
        plain = {k: v for k, v in kwargs.items() if k not in CONTROL_KWARGS}
        for unit in active:
            self.attention.begin_write(unit.weight if unit.attention else -1.0, unit.fidelity)
            if self.group_norms is not None:
                self.group_norms.mode = "write"
                self.group_norms.write_weight = unit.weight if unit.adain else -1.0
                self.group_norms.write_fidelity = unit.fidelity
            call(self.noised(unit, t, model_input.shape[0]).to(model_input.dtype), t, step, plain)
        self.attention.begin_read()
        if self.group_norms is not None:
            self.group_norms.mode = "read"
        return True


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t of the model's training schedule (what its UNet input at timestep t is noised by)."""
    from diffusers import DDPMScheduler

    keep = {k: v for k, v in scheduler_config.items() if k in ("num_train_timesteps", "beta_start", "beta_end",
                                                               "beta_schedule", "trained_betas",
                                                               "rescale_betas_zero_snr")}
    return DDPMScheduler(**keep).alphas_cumprod
