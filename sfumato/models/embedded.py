"""The embedded default model, "sfumato-emoji": shipped inside the package, used when no model is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EMBEDDED_NAME = "sfumato-emoji"
EMBEDDED_DIR = Path(__file__).parent / "embedded" / EMBEDDED_NAME


def embedded_model() -> Path | None:
    """The embedded model's folder, if this install carries it."""
    return EMBEDDED_DIR if (EMBEDDED_DIR / "model_index.json").exists() else None


# `--fast` / the UI's "Fast": the embedded model with the LCM sampler (its x0 prediction, no CFG pass) at 2 steps.
# Measured on all 1,870 base emoji (docs/emoji-lcm-steps.json): reference-classifier top-1 0.916 against 0.926 for
# the 8-step Euler a default. Latent consistency distillation of this model did not beat it (full UNet: 0.779;
# an LCM-LoRA: 0.921 vs 0.923 on 468 names), so no distilled weights ship; see the README's model card.
FAST_SETTINGS: dict[str, Any] = {"preset": "lcm", "steps": 2}


def export_trained(source: Path, target: Path, defaults: dict[str, Any], checkpoint: Path | None = None,
                half: bool = True) -> Path:
    """Write a trained ldm-family model as (by default fp16) safetensors with `defaults` (sampler, steps, cfg) in sfumato.json.

    `half=False` keeps fp32 (a base for a further `sfumato train full` run).
    With `checkpoint` (a `sfumato train scratch` checkpoint folder), its EMA weights (else its trained
    weights) replace the UNet's: a run can be exported while it is still training.
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
    if half:
        loaded.pipe.unet.to(torch.float16)
        loaded.pipe.vae.to(torch.float16)
    settings = {**loaded.info.settings, **defaults}
    save_model_folder(loaded.pipe, target, settings)
    return target


def settings(path: Path) -> dict[str, Any]:
    file = path / "sfumato.json"
    return json.loads(file.read_text()) if file.exists() else {}
