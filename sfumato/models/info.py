"""What a model is, known without loading its weights: `ModelInfo`, and the family a checkpoint's keys tell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfumato.errors import UnsupportedModel
from sfumato.models.families import FAMILIES, Family

CONFIGS_METADATA_KEY = "sfumato.configs"  # component configs stored in a single file's safetensors metadata


@dataclass
class ModelInfo:
    path: Path
    format: str  # "diffusers", "safetensors", "pickle", "gguf"
    family: Family
    prediction_type: str
    inpainting: bool = False
    configs: dict[str, Any] = field(default_factory=dict)  # component configs when known without loading
    settings: dict[str, Any] = field(default_factory=dict)  # the folder's sfumato.json, if any
    quantization: str | None = None  # GGUF: the UNet's weight type (q8_0, q4_0, f16, ...)

    @property
    def native_size(self) -> int:
        unet = self.configs.get("unet", {})
        vae = self.configs.get("vae", {})
        if "sample_size" in unet and vae.get("block_out_channels"):
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        return self.family.native_size

    @property
    def instruct(self) -> bool:
        """An InstructPix2Pix UNet: it takes the image latents beside the noisy ones (twice the VAE's channels)."""
        unet = self.configs.get("unet", {})
        if self.family.denoiser == "video":  # SVD's UNet also takes the image latents: it animates, not edits
            return False
        return unet.get("in_channels") == 2 * int(self.configs.get("vae", {}).get("latent_channels", 4)) \
            and unet.get("out_channels", 4) != unet.get("in_channels")

    @property
    def dit_denoiser(self) -> bool:
        """A `train scratch --arch dit` model: a DiT (models.textdit) where the UNet goes."""
        return self.configs.get("unet", {}).get("_class_name") == "TextDiT"

    @property
    def name(self) -> str:
        return self.path.name if self.path.is_dir() else self.path.stem


def family_from_keys(keys: set[str], path: Path) -> Family:
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    if has("model.diffusion_model.joint_blocks.") or has("joint_blocks."):
        return FAMILIES["sd3"]
    if has("double_blocks.") or has("model.diffusion_model.double_blocks."):
        return FAMILIES["flux"]
    if not has("model.diffusion_model."):
        if has("lora_") or any(".lora" in key for key in keys):
            raise UnsupportedModel(f"{path} is a LoRA, not a checkpoint; pass it with --lora")
        raise UnsupportedModel(f"{path}: no Stable Diffusion UNet keys (model.diffusion_model.*) found")
    if has("conditioner.embedders.1.model."):
        return FAMILIES["sdxl"]
    if has("conditioner.embedders.0.model."):
        return FAMILIES["sdxl-refiner"]
    if has("cond_stage_model.model."):
        return FAMILIES["sd2"]
    if has("cond_stage_model.transformer."):
        return FAMILIES["sd1"]
    raise UnsupportedModel(f"{path}: UNet found but no known text encoder keys; cannot tell the family")
