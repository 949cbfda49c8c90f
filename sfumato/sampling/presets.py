"""Few-step presets: the sampler settings that LCM, Turbo, Lightning, Hyper-SD and TCD models and LoRAs need.

A preset fills only what the request leaves open (sampler, steps, CFG, timestep spacing, eta). A model declares
its preset in `sfumato.json` beside its weights (`{"preset": "turbo"}`, or the settings themselves); a LoRA is
recognised by its file name or training metadata (`lcm-lora-sdv1-5`, `sdxl_lightning_4step_lora`,
`Hyper-SD15-8steps-lora`, `TCD-SD15-LoRA`). CFG 1 turns guidance off: one UNet pass per step, no negative prompt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sfumato.errors import InvalidRequest

PRESETS: dict[str, dict[str, Any]] = {
    # latent consistency models / LCM-LoRA (Luo et al. 2023): the LCM sampler, 4 steps, little or no CFG
    "lcm": {"sampler": "LCM", "steps": 4, "cfg_scale": 1.0},
    # SD-Turbo / SDXL-Turbo (adversarial diffusion distillation): 1 step, no CFG, trailing timesteps
    "turbo": {"sampler": "Euler a", "steps": 1, "cfg_scale": 1.0, "timestep_spacing": "trailing"},
    # SDXL-Lightning (progressive adversarial distillation): Euler, trailing, no CFG
    "lightning": {"sampler": "Euler", "steps": 4, "cfg_scale": 1.0, "timestep_spacing": "trailing"},
    # Hyper-SD 2/4/8-step LoRAs: DDIM with trailing timesteps, no CFG
    "hyper": {"sampler": "DDIM", "steps": 8, "cfg_scale": 1.0, "timestep_spacing": "trailing", "eta": 0.0},
    # trajectory consistency distillation: the TCD sampler with gamma (eta) 0.3
    "tcd": {"sampler": "TCD", "steps": 4, "cfg_scale": 1.0, "eta": 0.3},
}
SETTINGS = ("sampler", "steps", "cfg_scale", "timestep_spacing", "eta")
# names of the published distillation LoRAs; deliberately narrow, so a style LoRA called "turbo-anime" is not taken
# for a 1-step model
_NAME_HINTS = [("lcm", r"(^|[^a-z])lcm[-_ ]?lora"), ("lightning", r"lightning.*\d+[-_ ]?steps?"),
               ("hyper", r"hyper-?sd"), ("tcd", r"(^|[^a-z])tcd[-_ ]?(sd|lora)")]


def preset_settings(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise InvalidRequest(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def model_settings(path: Path, declared: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model's declared sampling defaults: `sfumato.json` in its folder (or `NAME.json` beside a single file),
    either `{"preset": NAME}` or the settings themselves. `declared`: that file's content as already read (a folder's
    `ModelInfo.settings`), so a request does not read it again."""
    if declared is None:
        candidate = path / "sfumato.json" if path.is_dir() else path.with_suffix(".json")
        if not candidate.is_file():
            return {}
        try:
            declared = json.loads(candidate.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"{candidate}: not valid JSON ({exc})") from None
        if not isinstance(declared, dict):
            raise InvalidRequest(f"{candidate}: expected a JSON object")
    settings = dict(preset_settings(declared["preset"])) if declared.get("preset") else {}
    settings.update({k: v for k, v in declared.items() if k in SETTINGS})
    if declared.get("preset"):
        settings["preset"] = declared["preset"]  # the name, recorded with the image (`Preset: lcm`)
    return settings


def lora_preset(path: Path) -> str | None:
    """The preset a LoRA was distilled for, from its file name or its training metadata (kohya `ss_output_name`,
    `modelspec.title`), or None."""
    texts = [path.stem.lower()]
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        texts += [str(meta.get(key, "")).lower() for key in ("ss_output_name", "modelspec.title", "sfumato.preset")]
        if meta.get("sfumato.preset") in PRESETS:
            return meta["sfumato.preset"]
    except Exception:  # noqa: BLE001 - an unreadable file fails later, where LoRAs are loaded, with its own message
        pass
    for name, pattern in _NAME_HINTS:
        if any(re.search(pattern, text) for text in texts):
            return name
    return None
