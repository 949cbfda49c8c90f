"""VAE override (A1111's "SD VAE"): another VAE decodes (and encodes) in place of the model's own, per request.

A VAE is a diffusers `AutoencoderKL` folder, a model folder with a `vae/` subfolder, or one `.safetensors` file in
the LDM layout of A1111's VAE files (`encoder.down.0…`, with or without the `first_stage_model.` prefix of a full
checkpoint) or in the diffusers layout (`encoder.down_blocks.0…`). A file without a config in its metadata gets the
model's own VAE config (its architecture is the family's). The latent scaling (`scaling_factor`, `shift_factor`) stays
the model's: it belongs to the latent space the UNet was trained in, not to the decoder's weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sfumato.errors import UnsupportedModel
from sfumato.models import home
from sfumato.models.home import list_vaes, vae_folder as _folder  # noqa: F401
from sfumato.models.detect import CONFIGS_METADATA_KEY
from sfumato.models.loader import LoadedModel

OWN_VAE_NAMES = ("", "auto", "automatic", "none")  # A1111's "Automatic" / "None": the checkpoint's own VAE
LATENT_KEYS = ("scaling_factor", "shift_factor", "force_upcast", "latents_mean", "latents_std")


def is_own(name: str | None) -> bool:
    return name is None or name.strip().lower() in OWN_VAE_NAMES


def resolve_vae(name: str) -> Path:
    """A path, or a name in `$SFUMATO_HOME/models/vae`; pickles are refused."""
    path = home.resolve(name, "vae")
    home.refuse_pickle(path)
    if path.is_file() and path.suffix != ".safetensors":
        raise UnsupportedModel(f"VAE {path} must be a .safetensors file or a diffusers folder")
    if path.is_dir() and not ((path / "config.json").exists() or (path / "vae" / "config.json").exists()):
        raise UnsupportedModel(f"VAE folder {path} has neither config.json nor vae/config.json")
    return path


def vae_state_dict(path: Path, config: dict) -> dict[str, torch.Tensor]:
    """A single file's tensors in diffusers `AutoencoderKL` keys, whichever layout it uses."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = load_file(str(path))
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    state = {k: v for k, v in state.items() if not k.startswith("model_ema.") and k != "model_ema.decay"}
    if any(k.startswith("encoder.down_blocks.") for k in state):
        return state
    return convert_ldm_vae_checkpoint(state, config)


def load_vae(path: Path, own_config: dict, dtype: torch.dtype, device: torch.device):
    """The VAE at `path` as an `AutoencoderKL` on `device`, with the latent scaling of the model's own VAE (whose
    config is `own_config`; a file without a config of its own gets this one)."""
    from diffusers import AutoencoderKL

    own = {k: v for k, v in dict(own_config).items() if not k.startswith("_")}
    try:
        folder = _folder(path) if path.is_dir() else None
        if folder is not None:
            vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True,
                                                use_safetensors=True)
        else:
            with safe_open(str(path), framework="pt") as handle:
                stored = json.loads((handle.metadata() or {}).get(CONFIGS_METADATA_KEY, "{}")).get("vae")
            config = {**own, **(stored or {})}
            vae = AutoencoderKL.from_config(config)
            missing, unexpected = vae.load_state_dict(vae_state_dict(path, config), strict=False)
            if missing or unexpected:
                raise ValueError(f"{len(missing)} missing and {len(unexpected)} unexpected tensors, e.g. "
                                 f"{(missing or unexpected)[0]}")
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnsupportedModel(f"VAE {path} does not fit this model's VAE ({first})") from None
    if vae.config.latent_channels != own.get("latent_channels", 4):
        raise UnsupportedModel(f"VAE {path} has {vae.config.latent_channels} latent channels; this model's VAE has "
                               f"{own.get('latent_channels', 4)}")
    vae.register_to_config(**{k: own[k] for k in LATENT_KEYS if k in own})
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass
class VaeState:
    """The model's own VAE and the override loaded last (kept: switching back and forth costs no load)."""

    own: object
    path: Path | None = None
    override: object = None


def apply_vae(model: LoadedModel, name: str | None) -> None:
    """Make the VAE named by a request (None / "Automatic": the model's own) the one the pipeline uses."""
    if model.vae_state is None:
        if is_own(name):
            return
        model.vae_state = VaeState(model.pipe.vae)
    state: VaeState = model.vae_state
    wanted = state.own
    if not is_own(name):
        path = resolve_vae(name)
        if state.path != path.resolve():
            state.override, state.path = None, None  # free the previous override first
            state.override, state.path = load_vae(path, state.own.config, model.dtype, model.device), path.resolve()
        wanted = state.override
    if model.pipe.vae is not wanted:
        model.pipe.vae = wanted
        model.preview_factors = None  # fitted to the VAE that decodes
