"""Split single files, as the community ships Z-Image and Chroma: a folder holding the transformer `.safetensors` in
its original layout (ComfyUI's z_image_turbo_bf16.safetensors, chroma-unlocked-v50.safetensors), the text encoder's
file in transformers' layout (qwen_3_4b.safetensors, t5xxl_fp16.safetensors), the VAE's file (FLUX's
ae.safetensors, or a diffusers AutoencoderKL file) and a `tokenizer/` folder (the text encoder's transformers
tokenizer: neither Qwen's nor T5's is in a registry this machine reaches, so it comes with the model; for T5,
`$SFUMATO_HOME/models/tokenizers/t5` serves every model).

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


TRANSFORMERS = ("z-image", "chroma")  # the families whose split layout loads (their transformer's role)
TEXT_ENCODERS = {"z-image": "qwen3", "chroma": "t5"}


def role(keys: set[str]) -> str | None:
    """What a file of a split folder holds: a transformer ("z-image", "chroma"), "vae", a text encoder ("qwen3",
    "t5"), or None."""
    bare = {k.split("diffusion_model.", 1)[-1] for k in keys}
    if "cap_embedder.0.weight" in bare and any(".attention.qkv.weight" in k for k in bare):
        return "z-image"
    if "distilled_guidance_layer.in_proj.weight" in bare and "img_in.weight" in bare:
        return "chroma"
    if "shared.weight" in keys and any(k.startswith("encoder.block.0.") for k in keys):
        return "t5"
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
    return roles if any(family in roles for family in TRANSFORMERS) else None


def split_family(roles: dict[str, Path]) -> str:
    return next(family for family in TRANSFORMERS if family in roles)


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


def chroma_config(original: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Chroma's transformer config from its tensors' shapes (FLUX's rotary axes for 128-wide heads)."""
    shape = {k: tuple(v.shape) for k, v in original.items()}
    width, channels = shape["img_in.weight"]
    head = shape["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    axes = [16, 56, 56] if head == 128 else [head // 4, head * 3 // 8, head * 3 // 8]
    hidden, approximator_in = shape["distilled_guidance_layer.in_proj.weight"]
    return {"patch_size": 1, "in_channels": channels, "num_layers": _count(original, r"double_blocks\.(\d+)\."),
            "num_single_layers": _count(original, r"single_blocks\.(\d+)\."), "attention_head_dim": head,
            "num_attention_heads": width // head, "joint_attention_dim": shape["txt_in.weight"][1],
            "axes_dims_rope": axes, "approximator_num_channels": approximator_in,
            "approximator_hidden_dim": hidden,
            "approximator_layers": _count(original, r"distilled_guidance_layer\.layers\.(\d+)\.")}


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
    """A split Z-Image or Chroma folder as its diffusers pipeline."""
    import diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sfumato.models.flowfile import _build

    roles = describe_split(info.path) or {}
    family = split_family(roles)
    text = TEXT_ENCODERS[family]
    missing = [what for what in ("vae", text) if what not in roles]
    tokenizer = any((info.path / "tokenizer").glob("*.json")) or any((info.path / "tokenizer").glob("spiece.model"))
    if family == "chroma" and not tokenizer:
        from sfumato.models.home import home

        tokenizer = (home() / "models" / "tokenizers" / "t5").is_dir()
    if missing or not tokenizer:
        names = {"vae": "the VAE file (ae.safetensors)", "qwen3": "the Qwen3 text encoder file",
                 "t5": "the T5 text encoder file (t5xxl_fp16.safetensors)"}
        needs = [names[m] for m in missing]
        if not tokenizer:
            needs.append("a tokenizer/ folder (the text encoder's tokenizer.json and tokenizer_config.json)")
        raise UnsupportedModel(f"{info.path}: a split {family} folder needs {', '.join(needs)} beside the transformer")
    configs: dict[str, Any] = {}
    for file in roles.values():
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if CONFIGS_METADATA_KEY in metadata:
            configs.update(json.loads(metadata[CONFIGS_METADATA_KEY]))
    original = {k.split("diffusion_model.", 1)[-1]: v for k, v in load_file(str(roles[family])).items()}
    if family == "z-image":
        from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

        config = configs.get("transformer") or z_image_config(original)
        state = convert_z_image_transformer_checkpoint_to_diffusers(dict(original))
        cls = diffusers.ZImageTransformer2DModel
    else:
        from sfumato.models.flowfile import to_diffusers

        config = configs.get("transformer") or chroma_config(original)
        state, cls = to_diffusers(original, "chroma", info.path), diffusers.ChromaTransformer2DModel
    transformer = _build(cls.from_config, config, state, info, "transformer", dtype)
    encoder, tokenizer = _text_encoder(family, roles[text], configs, info, dtype)
    parts = {"transformer": transformer.eval(), "vae": _vae(roles["vae"], configs, info, dtype),
             "text_encoder": encoder, "tokenizer": tokenizer}
    if family == "z-image":
        scheduler = configs.get("scheduler") or Z_IMAGE_SCHEDULER
        return diffusers.ZImagePipeline(**parts, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            scheduler))
    from sfumato.models.flowfile import SCHEDULERS

    scheduler = configs.get("scheduler") or SCHEDULERS["flux"]
    return diffusers.ChromaPipeline(**parts, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler))


def _vae(file: Path, configs: dict[str, Any], info: ModelInfo, dtype: torch.dtype):
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    from sfumato.models.flowfile import _build, vae_config

    state = {k.split(".", 1)[1] if k.startswith(("first_stage_model.", "vae.")) else k: v
             for k, v in load_file(str(file)).items()}
    if "encoder.down.0.block.0.conv1.weight" in state:  # FLUX's ae.safetensors (the LDM layout)
        config = configs.get("vae") or vae_config("flux", state)
        state = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in state.items()}, config)
    else:  # a diffusers AutoencoderKL file
        config = configs.get("vae") or diffusers_vae_config(state)
    return _build(diffusers.AutoencoderKL.from_config, config, state, info, "VAE", dtype).eval()


def _text_encoder(family: str, file: Path, configs: dict[str, Any], info: ModelInfo, dtype: torch.dtype):
    """The text encoder of a split folder and its tokenizer (from `tokenizer/`; T5's also from the models home)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from sfumato.models.flowfile import _build, _load, t5_config, t5_tokenizer

    folder = info.path / "tokenizer"
    has_folder = folder.is_dir() and any(folder.iterdir())
    state = load_file(str(file))
    if family == "z-image":
        from transformers import Qwen3Config, Qwen3Model

        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head")}
        encoder = _build(lambda c: Qwen3Model(Qwen3Config(**c)), configs.get("text_encoder") or qwen3_config(state),
                         state, info, "text encoder", dtype)
        return encoder.eval(), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    from transformers import T5Config, T5EncoderModel

    encoder = _build(lambda c: T5EncoderModel(T5Config(**c)), configs.get("text_encoder") or t5_config(state), None,
                     info, "text encoder", dtype)
    state = {k: v for k, v in state.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
    _load(encoder, state, info, "text encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True) if has_folder else \
        t5_tokenizer({}, info)
    return encoder.eval(), tokenizer


def write_split(pipe, folder: Path) -> Path:
    """A Z-Image or Chroma pipeline as a split folder in the community's layout (its configs in the metadata)."""
    from safetensors.torch import save_file

    from sfumato.models.keys import jsonable, vae_to_ldm

    z_image = type(pipe).__name__.startswith("ZImage")
    folder.mkdir(parents=True, exist_ok=True)
    configs = {"transformer": dict(pipe.transformer.config), "vae": dict(pipe.vae.config),
               "text_encoder": {k: v for k, v in pipe.text_encoder.config.to_diff_dict().items()
                                if not k.startswith("_")},
               "scheduler": dict(pipe.scheduler.config)}
    metadata = {CONFIGS_METADATA_KEY: json.dumps(configs, default=jsonable)}
    if z_image:
        original = z_image_to_original(pipe.transformer.state_dict())
        names = ("z_image_turbo.safetensors", "qwen_3.safetensors")
        text = {"model." + k: v for k, v in pipe.text_encoder.state_dict().items()}
    else:
        from sfumato.models.flowfile import to_original

        original = to_original(pipe.transformer.state_dict(), "chroma")
        names = ("chroma.safetensors", "t5xxl.safetensors")
        text = {k: v for k, v in pipe.text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in original.items()}, str(folder / names[0]),
              metadata=metadata)
    ldm = {k.removeprefix("first_stage_model."): v.contiguous()
           for k, v in vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)).items()}
    save_file(ldm, str(folder / "ae.safetensors"))
    save_file({k: v.contiguous() for k, v in text.items()}, str(folder / names[1]))
    pipe.tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder
