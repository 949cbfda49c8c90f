"""Split single files, as the community ships Z-Image: a folder holding the transformer `.safetensors` (the
original layout, e.g. ComfyUI's z_image_turbo_bf16.safetensors), the text encoder's file (Qwen3, transformers'
layout, e.g. qwen_3_4b.safetensors), the VAE's file (FLUX's ae.safetensors, or a diffusers AutoencoderKL file) and a
`tokenizer/` folder (the text encoder's transformers tokenizer: Qwen's tokenizer is not in any registry this
machine reaches, so it comes with the model).

Each file's role is read off its keys, never its name. Configs come from the files' metadata when sfumato wrote them,
else from the tensor shapes over the released model's config (rotary axes, eps, theta: what shapes cannot say).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sfumato.errors import UnsupportedModel
from sfumato.models.info import CONFIGS_METADATA_KEY, ModelInfo

# the released Z-Image-Turbo transformer's config (what the tensor shapes do not say)
Z_IMAGE_TRANSFORMER = {"all_patch_size": [2], "all_f_patch_size": [1], "norm_eps": 1e-5, "qk_norm": True,
                       "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}
Z_IMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _count(keys, pattern: str) -> int:
    import re

    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def role(keys: set[str]) -> str | None:
    """What a file of a split folder holds: "z-image" (a transformer), "vae", "qwen3" (a text encoder), or None."""
    bare = {k.split("diffusion_model.", 1)[-1] for k in keys}
    if "cap_embedder.0.weight" in bare and any(".attention.qkv.weight" in k for k in bare):
        return "z-image"
    if "decoder.conv_in.weight" in keys or "encoder.down_blocks.0.resnets.0.conv1.weight" in keys or \
            any(k.startswith(("first_stage_model.decoder.", "vae.decoder.")) for k in keys):
        return "vae"
    if any(k.endswith("self_attn.q_norm.weight") for k in keys) and \
            any(k.endswith("embed_tokens.weight") for k in keys):
        return "qwen3"
    return None


def describe_split(path: Path) -> dict[str, Path] | None:
    """The roles of a folder's `.safetensors` files when it is a split model (a transformer among them), else None."""
    from safetensors import safe_open

    roles: dict[str, Path] = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                found = role(set(handle.keys()))
        except Exception:  # noqa: BLE001 - not a readable safetensors file: not a part
            continue
        if found:
            roles.setdefault(found, file)
    return roles if "z-image" in roles else None


def z_image_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ZImageTransformer2DModel state dict in the original layout (what diffusers' converter reads)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q.weight" in key:
            stem = key.replace(".attention.to_q.weight", "")
            value = torch.cat([state[f"{stem}.attention.to_{p}.weight"] for p in "qkv"])
            key = f"{stem}.attention.qkv.weight"
        for theirs, ours in ((".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
                             (".attention.norm_q.", ".attention.q_norm."), ("all_final_layer.2-1.", "final_layer."),
                             ("all_x_embedder.2-1.", "x_embedder.")):
            key = key.replace(theirs, ours)
        out[key] = value
    return out


def z_image_config(original: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The transformer config from its tensors' shapes over the released model's."""
    shape = {k: tuple(v.shape) for k, v in original.items()}
    dim = shape["cap_embedder.1.weight"][0]
    head = shape["layers.0.attention.q_norm.weight"][0]
    qkv = shape["layers.0.attention.qkv.weight"][0]
    config = dict(Z_IMAGE_TRANSFORMER)
    scale = head / sum(config["axes_dims"])
    config.update(dim=dim, n_heads=dim // head, n_kv_heads=(qkv - dim) // 2 // head,
                  cap_feat_dim=shape["cap_embedder.1.weight"][1], in_channels=shape["x_embedder.weight"][1] // 4, n_layers=_count(original, r"layers\.(\d+)\."),
                  n_refiner_layers=_count(original, r"noise_refiner\.(\d+)\."))
    if scale != 1:  # a smaller head than the released one: its rotary axes scaled alike
        config["axes_dims"] = [int(a * scale) for a in config["axes_dims"]]
    return config


def diffusers_vae_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers-layout AutoencoderKL file's config from its shapes (FLUX's scaling and shift)."""
    from sfumato.models.flowfile import VAE_FACTORS

    blocks = _count(state, r"encoder\.down_blocks\.(\d+)\.")
    return {"in_channels": 3, "out_channels": 3, "latent_channels": state["decoder.conv_in.weight"].shape[1],
            "block_out_channels": [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]
                                   for i in range(blocks)],
            "down_block_types": ["DownEncoderBlock2D"] * blocks, "up_block_types": ["UpDecoderBlock2D"] * blocks,
            "layers_per_block": _count(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."), "norm_num_groups": 32,
            "use_quant_conv": "quant_conv.weight" in state, "use_post_quant_conv": "post_quant_conv.weight" in state,
            **VAE_FACTORS["flux"]}


def qwen3_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    vocab, hidden = state["embed_tokens.weight"].shape
    head = state["layers.0.self_attn.q_norm.weight"].shape[0]
    return {"vocab_size": vocab, "hidden_size": hidden, "head_dim": head,
            "intermediate_size": state["layers.0.mlp.gate_proj.weight"].shape[0],
            "num_hidden_layers": _count(state, r"layers\.(\d+)\."),
            "num_attention_heads": state["layers.0.self_attn.q_proj.weight"].shape[0] // head,
            "num_key_value_heads": state["layers.0.self_attn.k_proj.weight"].shape[0] // head,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960}


def load_split(info: ModelInfo, dtype: torch.dtype):
    """A split Z-Image folder as its diffusers pipeline."""
    import diffusers
    from diffusers.loaders.single_file_utils import (convert_ldm_vae_checkpoint,
                                                     convert_z_image_transformer_checkpoint_to_diffusers)
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from sfumato.models.flowfile import _build, vae_config

    roles = describe_split(info.path) or {}
    missing = [what for what in ("vae", "qwen3") if what not in roles]
    tokenizer = any((info.path / "tokenizer").glob("tokenizer*.json"))
    if missing or not tokenizer:
        needs = [{"vae": "the VAE file (ae.safetensors)", "qwen3": "the Qwen3 text encoder file"}[m] for m in missing]
        if not tokenizer:
            needs.append("a tokenizer/ folder (Qwen3's tokenizer.json and tokenizer_config.json)")
        raise UnsupportedModel(f"{info.path}: a split Z-Image folder needs {', '.join(needs)} beside the transformer")
    configs: dict[str, Any] = {}
    for file in roles.values():
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if CONFIGS_METADATA_KEY in metadata:
            configs.update(json.loads(metadata[CONFIGS_METADATA_KEY]))
    original = {k.split("diffusion_model.", 1)[-1]: v for k, v in load_file(str(roles["z-image"])).items()}
    config = configs.get("transformer") or z_image_config(original)
    state = convert_z_image_transformer_checkpoint_to_diffusers(dict(original))
    transformer = _build(diffusers.ZImageTransformer2DModel.from_config, config, state, info, "transformer", dtype)
    ldm = {k.split(".", 1)[1] if k.startswith(("first_stage_model.", "vae.")) else k: v
           for k, v in load_file(str(roles["vae"])).items()}
    if "encoder.down.0.block.0.conv1.weight" in ldm:  # FLUX's ae.safetensors (the LDM layout)
        vae_cfg = configs.get("vae") or vae_config("flux", ldm)
        ldm = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in ldm.items()}, vae_cfg)
    else:  # a diffusers AutoencoderKL file
        vae_cfg = configs.get("vae") or diffusers_vae_config(ldm)
    vae = _build(diffusers.AutoencoderKL.from_config, vae_cfg, ldm, info, "VAE", dtype)
    text = {k.removeprefix("model."): v for k, v in load_file(str(roles["qwen3"])).items()
            if not k.startswith("lm_head")}
    encoder = _build(lambda c: Qwen3Model(Qwen3Config(**c)), configs.get("text_encoder") or qwen3_config(text), text,
                     info, "text encoder", dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(info.path / "tokenizer"), local_files_only=True)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(configs.get("scheduler") or Z_IMAGE_SCHEDULER)
    return diffusers.ZImagePipeline(transformer=transformer.eval(), vae=vae.eval(), text_encoder=encoder.eval(),
                                    tokenizer=tokenizer, scheduler=scheduler)


def write_split(pipe, folder: Path) -> Path:
    """A Z-Image pipeline as a split folder in the community's layout (with its configs in the metadata)."""
    from safetensors.torch import save_file

    from sfumato.models.keys import jsonable, vae_to_ldm

    folder.mkdir(parents=True, exist_ok=True)
    configs = {"transformer": dict(pipe.transformer.config), "vae": dict(pipe.vae.config),
               "text_encoder": {k: v for k, v in pipe.text_encoder.config.to_diff_dict().items()
                                if not k.startswith("_")},
               "scheduler": dict(pipe.scheduler.config)}
    metadata = {CONFIGS_METADATA_KEY: json.dumps(configs, default=jsonable)}
    transformer = {"model.diffusion_model." + k: v.contiguous()
                   for k, v in z_image_to_original(pipe.transformer.state_dict()).items()}
    save_file(transformer, str(folder / "z_image_turbo.safetensors"), metadata=metadata)
    ldm = {k.removeprefix("first_stage_model."): v.contiguous()
           for k, v in vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)).items()}
    save_file(ldm, str(folder / "ae.safetensors"))
    save_file({"model." + k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items()},
              str(folder / "qwen_3.safetensors"))
    pipe.tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder
