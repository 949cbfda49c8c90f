"""Describe a model without loading its weights: format, family, prediction type, inpainting."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors import safe_open

from sfumato.caching import Recent
from sfumato.errors import ModelNotFound, UnsupportedModel
from sfumato.models.families import FAMILIES, Family, family_for_pipeline
from sfumato.models.home import PICKLE_SUFFIXES
from sfumato.models.info import CONFIGS_METADATA_KEY, ModelInfo, family_from_keys

__all__ = ["CONFIGS_METADATA_KEY", "ModelInfo", "describe", "family_from_keys"]

SETTINGS_FILE = "sfumato.json"  # per-model settings: defaults, text-encoder reference, prompt chunk length
FAMILY_DEFAULTS = ("default_sampler", "default_steps", "default_cfg_scale")


# known pipelines sfumato does not run yet, with what to use instead
NOT_YET = {
    "QwenImageEdit": "Qwen-Image-Edit is not supported: its Qwen2VLProcessor builds transformers' video processor, which "
                     "requires torch's vision library, which sfumato never installs (it replaces the CPU torch); edit by "
                     "instruction with a FLUX.1 Kontext model, or use Qwen-Image img2img/inpaint",
}


def describe(path: Path) -> ModelInfo:
    """Detect a model's format and family from `model_index.json` or from single-file keys.

    Asked for every request (resolve, batch keys): a description is kept while the files it was read from keep
    their size and modification time (a single file's header lists every tensor; a folder has up to 8 JSON
    files). The returned ModelInfo is shared: treat it as read-only."""
    if not path.exists():
        raise ModelNotFound(f"model {path} does not exist")
    signature = _signature(path)
    cached = _DESCRIBED.peek(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    info = _describe(path)
    _DESCRIBED.put(path, (signature, info))
    return info


_DESCRIBED: Recent[tuple[tuple, ModelInfo]] = Recent(64)
_FOLDER_FILES = ("model_index.json", SETTINGS_FILE) + tuple(
    f"{component}/{name}" for component in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "transformer")
    for name in ("config.json", "scheduler_config.json"))


def _signature(path: Path) -> tuple:
    """(size, mtime) of the files a description reads (missing ones as None): equal means nothing changed."""
    folder = path.is_dir()
    names = _FOLDER_FILES if folder else ("",)
    signature = []
    for name in names:
        try:
            stat = os.stat(os.path.join(path, name) if name else path)
            signature.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            signature.append(None)
    if folder:  # a GGUF denoiser dropped into unet/ or transformer/ (used when no safetensors is there), and the
        # files of a split folder (models.splitfile)
        for component in ("unet", "transformer", "."):
            try:
                signature.append(tuple(sorted(n for n in os.listdir(path / component)
                                              if n.endswith((".gguf", ".safetensors")))))
            except OSError:
                signature.append(None)
    return tuple(signature)


def _describe(path: Path) -> ModelInfo:
    if path.is_dir():
        return _describe_folder(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return ModelInfo(path, "pickle", FAMILIES["sd1"], "epsilon")
    if suffix == ".gguf":
        return _describe_gguf(path)
    if suffix != ".safetensors":
        raise UnsupportedModel(f"{path}: unknown model format {suffix!r} (expected a diffusers folder or .safetensors)")
    return _describe_single_file(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{path}: unreadable JSON ({exc})") from None


def _describe_folder(path: Path) -> ModelInfo:
    index_file = path / "model_index.json"
    if not index_file.exists():
        from sfumato.models.splitfile import describe_split, split_family

        roles = describe_split(path)
        if roles:  # a transformer file beside its text encoder and VAE files (models.splitfile)
            return ModelInfo(path, "split", FAMILIES[split_family(roles)], "flow")
        raise UnsupportedModel(f"{path} is a folder without model_index.json, so not a diffusers model")
    index = _read_json(index_file)
    pipeline = index.get("_class_name", "")
    configs: dict[str, Any] = {}
    for component in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "transformer"):
        for name in ("config.json", "scheduler_config.json"):
            if (path / component / name).exists():
                configs[component] = _read_json(path / component / name)
    unet = configs.get("unet", {})
    settings = _read_json(path / SETTINGS_FILE) if (path / SETTINGS_FILE).exists() else {}
    text_encoder_class = (index.get("text_encoder") or [None, None])[1] or ""
    if settings.get("family") == "ldm" or (text_encoder_class and not text_encoder_class.startswith("CLIP")
                                           and pipeline.startswith("StableDiffusion") and "unet" in configs):
        family = replace(FAMILIES["ldm"], **{k: settings[k] for k in FAMILY_DEFAULTS if k in settings})
        prediction = configs.get("scheduler", {}).get("prediction_type", "epsilon")
        return ModelInfo(path, "diffusers", family, prediction, unet.get("in_channels") == 2 * _latent_channels(configs) + 1,
                         configs, settings)
    family = family_for_pipeline(pipeline) or _unet_family(path, pipeline, index, configs)
    prediction = configs.get("scheduler", {}).get("prediction_type", family.prediction_type)
    if family.prediction_type == "flow":
        prediction = "flow"
    return ModelInfo(path, "diffusers", family, prediction, unet.get("in_channels") == 2 * _latent_channels(configs) + 1,
                     configs, settings, _component_quantization(path))


def _component_quantization(path: Path) -> str | None:
    """The weight type of a GGUF denoiser inside a diffusers folder (None when it has none)."""
    from sfumato.models.gguf import component_file, read_metadata

    for component in ("unet", "transformer"):
        if (path / component).is_dir() and component_file(path / component) is not None:
            return read_metadata(component_file(path / component))[2]
    return None


def _describe_single_file(path: Path) -> ModelInfo:
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            metadata = handle.metadata() or {}
            first_conv = "model.diffusion_model.input_blocks.0.0.weight"
            in_channels = handle.get_slice(first_conv).get_shape()[1] if first_conv in keys else 4
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise UnsupportedModel(f"{path}: not a readable safetensors file ({exc})") from None
    family = family_from_keys(keys, path)
    configs = json.loads(metadata[CONFIGS_METADATA_KEY]) if CONFIGS_METADATA_KEY in metadata else {}
    prediction = metadata.get("sfumato.prediction_type") or configs.get("scheduler", {}).get("prediction_type")
    return ModelInfo(path, "safetensors", family, prediction or family.prediction_type, in_channels == 9, configs)


def _describe_gguf(path: Path) -> ModelInfo:
    from sfumato.models.gguf import configs_of, read_metadata

    keys, strings, quantization = read_metadata(path)
    family = FAMILIES[strings["sfumato.family"]] if strings.get("sfumato.family") in FAMILIES else \
        family_from_keys(keys, path)
    configs = configs_of(strings)
    prediction = strings.get("sfumato.prediction_type") or family.prediction_type
    in_channels = configs.get("unet", {}).get("in_channels", 4)
    return ModelInfo(path, "gguf", family, prediction, in_channels == 9, configs, quantization=quantization)


def _latent_channels(configs: dict) -> int:
    """The VAE's latent channels (4 for SD; 8 for sfumato-scenes): an inpainting UNet takes 2x + 1 (latents, masked
    image latents, mask), an InstructPix2Pix UNet 2x (latents, image latents)."""
    return int(configs.get("vae", {}).get("latent_channels", 4))


def _unet_family(path: Path, pipeline: str, index: dict, configs: dict) -> Family:
    """The UNet families no pipeline name alone tells apart: SDXL base or refiner (its first text encoder), SD1 or
    SD2 (the cross-attention width, the CLIP activation)."""
    if pipeline.startswith("StableDiffusionXL"):
        has_first_encoder = (index.get("text_encoder") or [None])[0] is not None
        return FAMILIES["sdxl"] if has_first_encoder else FAMILIES["sdxl-refiner"]
    if pipeline.startswith("StableDiffusion") or "unet" in configs:
        openclip = configs.get("text_encoder", {}).get("hidden_act") == "gelu"  # SD1's CLIP-L uses quick_gelu
        cross = configs.get("unet", {}).get("cross_attention_dim")
        return FAMILIES["sd2"] if cross == 1024 or openclip else FAMILIES["sd1"]
    for prefix, hint in NOT_YET.items():
        if pipeline.startswith(prefix):
            raise UnsupportedModel(f"{path}: {hint}")
    names = ", ".join(sorted({p for f in FAMILIES.values() for p in f.pipelines} | {"StableDiffusion*"}))
    raise UnsupportedModel(f"{path}: pipeline {pipeline!r} is not a supported family (pipelines: {names})")
