"""Single-file (A1111/LDM layout) checkpoints: load offline, and write from diffusers components.

Loading uses diffusers' own key converters with configs that ship in the package (or ride in the
file's metadata), so nothing is fetched. Writing maps diffusers keys back to the LDM layout and
stores the component configs in the safetensors metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sfumato.errors import UnsupportedModel
from sfumato.models.info import CONFIGS_METADATA_KEY, ModelInfo
from sfumato.models.keys import (CLIP_TOKENIZER_DIR, CONFIGS_DIR, VAE_PREFIX, canonical_text_keys, clip_tokenizer,
                                 jsonable, to_model_keys, vae_to_ldm)

__all__ = ["CLIP_TOKENIZER_DIR", "CONFIGS_DIR", "VAE_PREFIX", "canonical_text_keys", "clip_tokenizer", "to_model_keys",
           "vae_to_ldm"]

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIXES = {  # family -> {component: (ldm prefix, layout)}
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", "hf")},
    "sd2": {"text_encoder": ("cond_stage_model.model.", "openclip")},
    "sdxl": {"text_encoder": ("conditioner.embedders.0.transformer.", "hf"),
             "text_encoder_2": ("conditioner.embedders.1.model.", "openclip")},
    "sdxl-refiner": {"text_encoder_2": ("conditioner.embedders.0.model.", "openclip")},
}


def load_components(info: ModelInfo, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Build the diffusers components of a single-file checkpoint with no network access."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = info.configs or info.family.skeleton
    if info.format == "gguf":
        from sfumato.models.gguf import read_gguf

        checkpoint = read_gguf(info.path)
    else:
        checkpoint = load_file(str(info.path))
    components: dict[str, Any] = {}

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    unet_state = convert_ldm_unet_checkpoint(checkpoint, unet.config)
    if info.format == "gguf":  # quantized matrices stay quantized: their Linear layers dequantize per call
        from sfumato.models.gguf import quantized_linears

        loaded = quantized_linears(unet, unet_state, dtype)
        unet_state = {k: v for k, v in unet_state.items() if k not in loaded}
    else:
        loaded = set()
    _load_strict(unet, unet_state, info, "UNet", loaded)
    if info.format == "gguf" and dtype != torch.float16:  # its float16 tensors stay float16, computed in `dtype`
        from sfumato.memory.quantize import quantize_weights

        quantize_weights(unet, "f16", everything=True, compute_dtype=dtype)
    _load_strict(vae, convert_ldm_vae_checkpoint(checkpoint, vae.config), info, "VAE")
    components["unet"], components["vae"] = unet.to(dtype), vae.to(dtype)

    for component, (prefix, layout) in TEXT_PREFIXES[info.family.name].items():
        config = CLIPTextConfig(**configs[component])
        cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        with init_empty_weights():
            model = cls(config)
        if layout == "hf":
            state = convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(prefix)})
        else:
            state = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
        _load_strict(model, to_model_keys(state, model), info, component)
        components[component] = model.to(dtype).eval()
        token_component = component.replace("text_encoder", "tokenizer")
        components[token_component] = clip_tokenizer(configs.get(token_component, {}).get("pad_token", "<|endoftext|>"))

    scheduler_config = dict(configs["scheduler"])
    scheduler_config["prediction_type"] = info.prediction_type
    components["scheduler_config"] = scheduler_config
    components["pipeline_config"] = configs.get("pipeline", {})
    return components


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], info: ModelInfo, what: str,
                 loaded: set[str] = frozenset()) -> None:
    """Load `state` (every key the model expects, except those `loaded` already: GGUF's packed matrices)."""
    expected = set(model.state_dict()) - set(loaded)
    missing = sorted(expected - set(state) - {"text_model.embeddings.position_ids"})
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        sample = (missing or unexpected)[:3]
        raise UnsupportedModel(
            f"{info.path}: {what} weights do not match the {info.family.name} config "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {sample})"
        )
    model.load_state_dict(state, strict=False, assign=True)


# ---------------------------------------------------------------- diffusers -> LDM keys


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise UnsupportedModel("per-block layers_per_block cannot be written as a single file")
    up_types = config["up_block_types"]
    resnet_parts = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                    ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    top_level = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                 "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
                 "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}

    def down(m: re.Match) -> str:
        block, layer, kind = int(m[1]), int(m[3]), m[2]
        return f"input_blocks.{block * (layers + 1) + layer + 1}.{0 if kind == 'resnets' else 1}."

    def up(m: re.Match) -> str:
        block, layer, kind = int(m[1]), int(m[3]), m[2]
        return f"output_blocks.{block * (layers + 1) + layer}.{0 if kind == 'resnets' else 1}."

    def upsampler(m: re.Match) -> str:
        block = int(m[1])
        position = 2 if "CrossAttn" in up_types[block] else 1
        return f"output_blocks.{block * (layers + 1) + layers}.{position}."

    rules = [
        (r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", down),
        (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda m: f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op."),
        (r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", up),
        (r"^up_blocks\.(\d+)\.upsamplers\.0\.", upsampler),
        (r"^mid_block\.attentions\.0\.", lambda m: "middle_block.1."),
        (r"^mid_block\.resnets\.(\d+)\.", lambda m: f"middle_block.{2 * int(m[1])}."),
    ]
    out = {}
    for key, value in state.items():
        new = key
        for prefix, target in top_level.items():
            if key.startswith(prefix):
                new = target + key[len(prefix):]
        for pattern, repl in rules:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                if ".resnets." in key:
                    new = _rename_resnet(new, resnet_parts)
                break
        if new == key and not key.startswith(tuple(top_level)) and not key.startswith("class_embedding"):
            raise UnsupportedModel(f"UNet key {key} has no single-file equivalent")
        out[UNET_PREFIX + new] = value
    return out


def _rename_resnet(key: str, parts: list[tuple[str, str]]) -> str:
    head, _, leaf = key.rpartition(".")
    block, _, name = head.rpartition(".")
    for hf, ldm in parts:
        if name == hf:
            return f"{block}.{ldm}.{leaf}"
    return key


def openclip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP text weights -> OpenCLIP names (fused q/k/v in_proj, transposed projection)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "text_model.embeddings.position_ids":
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        new = (key.replace("text_model.embeddings.token_embedding.", "token_embedding.")
               .replace("text_model.embeddings.position_embedding.weight", "positional_embedding")
               .replace("text_model.final_layer_norm.", "ln_final.")
               .replace("text_model.encoder.layers.", "transformer.resblocks.")
               .replace(".layer_norm1.", ".ln_1.").replace(".layer_norm2.", ".ln_2.")
               .replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj.")
               .replace(".self_attn.", ".attn."))
        match = re.match(r"(.*\.attn)\.([qkv])_proj\.(weight|bias)$", new)
        if match:
            fused.setdefault(f"{match[1]}.in_proj_{match[3]}", {})[match[2]] = value
            continue
        out[new] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def ldm_checkpoint(components: dict[str, Any], info: ModelInfo,
                   half: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Diffusers components (unet, vae, text encoders) -> one LDM-layout state dict and the metadata (configs,
    family, prediction type) that lets us load it back without a network. SD3/FLUX: their original layouts."""
    if info.family.name in ("sd3", "flux"):
        from sfumato.models.flowfile import flow_checkpoint

        return flow_checkpoint(components, info, half)
    if info.family.name not in TEXT_PREFIXES:
        raise UnsupportedModel(f"{info.family.name} models have no single-file layout (their text encoder is not an "
                               "SD one): keep the diffusers folder")
    configs: dict[str, Any] = {
        "unet": dict(components["unet"].config),
        "vae": dict(components["vae"].config),
        "scheduler": {**dict(components["scheduler"].config), "prediction_type": info.prediction_type},
        "pipeline": components.get("pipeline_config", {}),
    }
    state = unet_to_ldm(components["unet"].state_dict(), configs["unet"])
    state.update(vae_to_ldm(components["vae"].state_dict(), configs["vae"]))
    for component, (prefix, layout) in TEXT_PREFIXES[info.family.name].items():
        encoder = components[component]
        text_state = canonical_text_keys(encoder.state_dict())
        if layout == "openclip":
            text_state = openclip_to_ldm(text_state)
        state.update({prefix + key: value for key, value in text_state.items() if not key.endswith("position_ids")})
        configs[component] = {k: v for k, v in encoder.config.to_diff_dict().items() if not k.startswith("_")}
        tokenizer = components[component.replace("text_encoder", "tokenizer")]
        configs[component.replace("text_encoder", "tokenizer")] = {"pad_token": str(tokenizer.pad_token)}
    dtype = torch.float16 if half else None
    state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata = {
        CONFIGS_METADATA_KEY: json.dumps(configs, default=jsonable),
        "sfumato.family": info.family.name,
        "sfumato.prediction_type": info.prediction_type,
    }
    return state, metadata


def write_single_file(components: dict[str, Any], info: ModelInfo, out: Path, half: bool = False) -> None:
    """Write diffusers components (unet, vae, text encoders) as one LDM-layout safetensors file."""
    state, metadata = ldm_checkpoint(components, info, half)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={**metadata, "format": "pt"})
    tmp.replace(out)
