"""The embedded models, shipped inside the package: "sfumato-scenes" (the default, used when no model is named: 64 px
scenes composed from a prompt) and "sfumato-emoji" (the earlier default: one 32 px emoji per CLDR name). Both resolve
by name anywhere a model name is taken (`--model sfumato-emoji`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sfumato.models.home import EMBEDDED_NAMES, EMBEDDED_ROOT

EMBEDDED_NAME = EMBEDDED_NAMES[0]  # the default
EMBEDDED_DIR = EMBEDDED_ROOT / EMBEDDED_NAME


def embedded_model(name: str | None = None) -> Path | None:
    """The folder of the embedded model `name` (default: the default one), if this install carries it."""
    if name is not None and name not in EMBEDDED_NAMES:
        return None
    path = EMBEDDED_ROOT / (name or EMBEDDED_NAME)
    return path if (path / "model_index.json").exists() else None


def embedded_models() -> dict[str, Path]:
    """Every embedded model this install carries, the default first."""
    return {name: path for name in EMBEDDED_NAMES if (path := embedded_model(name)) is not None}


# `--fast` / the UI's "Fast": an embedded model at its few-step setting, `fast` in its sfumato.json. sfumato-emoji:
# the LCM sampler (its x0 prediction, no CFG pass) at 2 steps — measured on all 1,870 base emoji
# (docs/emoji-lcm-steps.json): reference-classifier top-1 0.916 against 0.926 for the 8-step Euler a default; latent
# consistency distillation did not beat it (full UNet: 0.779; an LCM-LoRA: 0.921 vs 0.923 on 468 names), so no
# distilled weights ship. sfumato-scenes: see its model card.
FAST_SETTINGS: dict[str, Any] = {"preset": "lcm", "steps": 2}


def fast_settings(path: Path) -> dict[str, Any]:
    """The few-step request fields of an embedded model (`fast` in its sfumato.json, else FAST_SETTINGS)."""
    return dict(settings(path).get("fast") or FAST_SETTINGS)


def export_trained(source: Path, target: Path, defaults: dict[str, Any], checkpoint: Path | None = None,
                   half: bool = True, vae: Path | None = None) -> Path:
    """Write a trained ldm-family model as (by default fp16) safetensors with `defaults` (sampler, steps, cfg) in sfumato.json.

    `half=False` keeps fp32 (a base for a further `sfumato train full` run).
    With `checkpoint` (a `sfumato train scratch` checkpoint folder), its EMA weights (else its trained
    weights) replace the UNet's: a run can be exported while it is still training. With `vae` (an AutoencoderKL
    folder: a fine-tuned decoder from `sfumato train vae --decoder-only`) that VAE replaces the run's.
    """
    import torch
    from safetensors.torch import load_file

    from sfumato.models.loader import load_model
    from sfumato.models.folder import save_model_folder

    loaded = load_model(source, device="cpu", dtype="float32")
    if checkpoint is not None:
        weights = checkpoint / ("ema.safetensors" if (checkpoint / "ema.safetensors").exists() else "trainable.safetensors")
        missing, unexpected = loaded.pipe.unet.load_state_dict(load_file(str(weights)), strict=False)
        if unexpected or [k for k in missing if not k.endswith(("position_ids",))]:
            raise ValueError(f"{weights} does not match the UNet ({len(missing)} missing, {len(unexpected)} unexpected)")
    if vae is not None:
        from diffusers import AutoencoderKL

        loaded.pipe.vae = AutoencoderKL.from_pretrained(str(vae), torch_dtype=torch.float32)
    if half:
        loaded.pipe.unet.to(torch.float16)
        loaded.pipe.vae.to(torch.float16)
    settings = {**loaded.info.settings, **defaults}
    save_model_folder(loaded.pipe, target, settings)
    return target


def settings(path: Path) -> dict[str, Any]:
    file = path / "sfumato.json"
    return json.loads(file.read_text()) if file.exists() else {}
