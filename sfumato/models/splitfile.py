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


TRANSFORMERS = ("z-image", "chroma", "qwen-image")  # the families whose split layout loads (their transformer's role)
TEXT_ENCODERS = {"z-image": "qwen3", "chroma": "t5", "qwen-image": "qwen2.5-vl"}
VAES = {"z-image": "vae", "chroma": "vae", "qwen-image": "wan-vae"}
# the released Qwen-Image scheduler and text-encoder settings (what shapes do not say)
QWEN_IMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                        "max_shift": 0.9, "base_image_seq_len": 256, "max_image_seq_len": 8192,
                        "time_shift_type": "exponential", "shift_terminal": 0.02}


def role(keys: set[str]) -> str | None:
    """What a file of a split folder holds: a transformer ("z-image", "chroma"), "vae", a text encoder ("qwen3",
    "t5"), or None."""
    bare = {k.split("diffusion_model.", 1)[-1] for k in keys}
    if "cap_embedder.0.weight" in bare and any(".attention.qkv.weight" in k for k in bare):
        return "z-image"
    if "distilled_guidance_layer.in_proj.weight" in bare and "img_in.weight" in bare:
        return "chroma"
    if "img_in.weight" in bare and "txt_norm.weight" in bare and "transformer_blocks.0.img_mod.1.weight" in bare:
        return "qwen-image"
    if any(k.startswith(("decoder.upsamples.", "encoder.downsamples.")) for k in keys) or \
            "decoder.up_blocks.0.resnets.0.norm1.gamma" in keys:
        return "wan-vae"  # Wan 2.1's VAE, as Qwen-Image ships it (original or diffusers layout)
    if "shared.weight" in keys and any(k.startswith("encoder.block.0.") for k in keys):
        return "t5"
    if "decoder.conv_in.weight" in keys or "encoder.down_blocks.0.resnets.0.conv1.weight" in keys or \
            any(k.startswith(("first_stage_model.decoder.", "vae.decoder.")) for k in keys):
        return "vae"
    if any(k.endswith("self_attn.q_norm.weight") for k in keys) and \
            any(k.endswith("embed_tokens.weight") for k in keys):
        return "qwen3"
    if any(k.endswith("self_attn.q_proj.bias") for k in keys) and any(k.endswith("embed_tokens.weight") for k in keys):
        return "qwen2.5-vl"  # Qwen2.5-VL (its language model is what Qwen-Image reads)
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


def qwen_image_config(original: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Qwen-Image's transformer config from its tensors' shapes (rotary axes for 128-wide heads)."""
    shape = {k: tuple(v.shape) for k, v in original.items()}
    width, channels = shape["img_in.weight"]
    head = shape["transformer_blocks.0.attn.norm_q.weight"][0]
    axes = [16, 56, 56] if head == 128 else [head // 4, head * 3 // 8, head * 3 // 8]
    return {"patch_size": 2, "in_channels": channels, "out_channels": shape["proj_out.weight"][0] // 4,
            "num_layers": _count(original, r"transformer_blocks\.(\d+)\."), "attention_head_dim": head,
            "num_attention_heads": width // head, "joint_attention_dim": shape["txt_in.weight"][1],
            "guidance_embeds": any(k.startswith("time_text_embed.guidance_embedder.") for k in original),
            "axes_dims_rope": axes}


def qwen_vl_text_config(language: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Qwen2.5-VL's language-model config from its shapes (128-wide heads, as every released size has)."""
    vocab, hidden = language["embed_tokens.weight"].shape
    head = 128
    return {"vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": hidden // head,
            "num_key_value_heads": language["layers.0.self_attn.k_proj.weight"].shape[0] // head,
            "intermediate_size": language["layers.0.mlp.gate_proj.weight"].shape[0],
            "num_hidden_layers": _count(language, r"layers\.(\d+)\."), "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "max_position_embeddings": 128000,
            "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}}


# Qwen-Image reads the text path only: its encoder is built with a minimal vision tower (never called), so neither
# the file's vision weights nor their config are needed
MINIMAL_VISION = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16}


def _qwen_vl(state: dict[str, torch.Tensor], config: dict[str, Any] | None, info: ModelInfo, dtype: torch.dtype):
    """The Qwen2.5-VL text encoder from a file in transformers' layout (old `model.layers.*` or new
    `model.language_model.*`); its vision weights are not read."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sfumato.models.flowfile import _load

    language = {}
    for key, value in state.items():
        if key.startswith("model.language_model."):
            language[key[len("model.language_model."):]] = value
        elif key.startswith("model.") and not key.startswith("model.visual."):
            language[key[len("model."):]] = value
    text = (config or {}).get("text_config") or qwen_vl_text_config(language)
    full = Qwen2_5_VLConfig(text_config=text, vision_config=MINIMAL_VISION, **{
        k: v for k, v in (config or {}).items() if k.endswith("token_id")})
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration(full)
    model.model.visual = type(model.model.visual)._from_config(full.vision_config)  # small, real, unused
    lm_head = state.get("lm_head.weight", language["embed_tokens.weight"])
    wanted = {f"model.language_model.{k}": v for k, v in language.items()}
    wanted["lm_head.weight"] = lm_head
    wanted.update({f"model.visual.{k}": v for k, v in model.model.visual.state_dict().items()})
    _load(model, wanted, info, "text encoder")
    return model.to(dtype).eval()


def _wan_vae(file: Path, configs: dict[str, Any], info: ModelInfo, dtype: torch.dtype):
    """Qwen-Image's VAE (Wan 2.1's design) from its original layout (`decoder.upsamples.*`, as ComfyUI ships it) or
    diffusers'; its config: sfumato's metadata, else the released one."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors.torch import load_file

    from sfumato.models.flowfile import _build

    state = load_file(str(file))
    if any(k.startswith("decoder.upsamples.") for k in state):
        state = convert_wan_vae_to_diffusers(state)
    config = configs.get("vae") or {}  # the class defaults are the released VAE's config
    return _build(diffusers.AutoencoderKLQwenImage.from_config, config, state, info, "VAE", dtype).eval()


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
    text, vae_role = TEXT_ENCODERS[family], VAES[family]
    missing = [what for what in (vae_role, text) if what not in roles]
    tokenizer = any((info.path / "tokenizer").glob("*.json")) or any((info.path / "tokenizer").glob("spiece.model"))
    if family == "chroma" and not tokenizer:
        from sfumato.models.home import home

        tokenizer = (home() / "models" / "tokenizers" / "t5").is_dir()
    if missing or not tokenizer:
        names = {"vae": "the VAE file (ae.safetensors)", "qwen3": "the Qwen3 text encoder file",
                 "t5": "the T5 text encoder file (t5xxl_fp16.safetensors)",
                 "wan-vae": "the VAE file (qwen_image_vae.safetensors)",
                 "qwen2.5-vl": "the Qwen2.5-VL text encoder file"}
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
    elif family == "chroma":
        from sfumato.models.flowfile import to_diffusers

        config = configs.get("transformer") or chroma_config(original)
        state, cls = to_diffusers(original, "chroma", info.path), diffusers.ChromaTransformer2DModel
    else:  # Qwen-Image's files keep diffusers' names
        config = configs.get("transformer") or qwen_image_config(original)
        state, cls = original, diffusers.QwenImageTransformer2DModel
    transformer = _build(cls.from_config, config, state, info, "transformer", dtype)
    encoder, tokenizer = _text_encoder(family, roles[text], configs, info, dtype)
    vae = _wan_vae(roles[vae_role], configs, info, dtype) if vae_role == "wan-vae" else \
        _vae(roles[vae_role], configs, info, dtype)
    parts = {"transformer": transformer.eval(), "vae": vae, "text_encoder": encoder, "tokenizer": tokenizer}
    if family == "qwen-image":
        scheduler = configs.get("scheduler") or QWEN_IMAGE_SCHEDULER
        return diffusers.QwenImagePipeline(**parts, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            scheduler))
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

    from sfumato.models.flowfile import _build, t5_tokenizer

    folder = info.path / "tokenizer"
    has_folder = folder.is_dir() and any(folder.iterdir())
    state = load_file(str(file))
    if family == "qwen-image":
        return _qwen_vl(state, configs.get("text_encoder"), info, dtype), \
            AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if family == "z-image":
        from transformers import Qwen3Config, Qwen3Model

        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head")}
        encoder = _build(lambda c: Qwen3Model(Qwen3Config(**c)), configs.get("text_encoder") or qwen3_config(state),
                         state, info, "text encoder", dtype)
        return encoder.eval(), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    from sfumato.models.flowfile import t5_encoder

    encoder = t5_encoder(state, configs.get("text_encoder"), info, "text encoder", dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True) if has_folder else \
        t5_tokenizer({}, info)
    return encoder.eval(), tokenizer


def wan_vae_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Wan/Qwen-Image VAE state dict in the original layout: the inverse of diffusers'
    `convert_wan_vae_to_diffusers`, found by running it over every original name the design can have (each with a
    marker value) and reading which one lands on each diffusers name."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    names = [f"conv{n}.{leaf}" for n in (1, 2) for leaf in ("weight", "bias")]
    parts = ("residual.0", "residual.2", "residual.3", "residual.6", "shortcut", "resample.1", "time_conv")
    for side, group in (("encoder", "downsamples"), ("decoder", "upsamples")):
        for leaf in ("weight", "bias", "gamma"):
            names += [f"{side}.conv1.{leaf}", f"{side}.head.0.{leaf}", f"{side}.head.2.{leaf}"]
            names += [f"{side}.middle.{m}.{p}.{leaf}" for m in range(3)
                      for p in ("residual.0", "residual.2", "residual.3", "residual.6", "norm", "to_qkv", "proj")]
            names += [f"{side}.{group}.{i}.{p}.{leaf}" for i in range(24) for p in parts]
    landed = convert_wan_vae_to_diffusers({name: torch.tensor([float(i)]) for i, name in enumerate(names)})
    inverse = {theirs: names[int(marker.item())] for theirs, marker in landed.items()}
    missing = sorted(set(state) - set(inverse))
    if missing:
        raise UnsupportedModel(f"VAE weights without an original name (e.g. {missing[:3]})")
    return {inverse[k]: v for k, v in state.items()}


def write_split(pipe, folder: Path) -> Path:
    """A Z-Image, Chroma or Qwen-Image pipeline as a split folder in the community's layout (its configs in the
    metadata)."""
    from safetensors.torch import save_file

    from sfumato.models.keys import jsonable, vae_to_ldm

    z_image = type(pipe).__name__.startswith("ZImage")
    qwen = type(pipe).__name__.startswith("QwenImage")
    folder.mkdir(parents=True, exist_ok=True)
    configs = {"transformer": dict(pipe.transformer.config), "vae": dict(pipe.vae.config),
               "text_encoder": {k: v for k, v in pipe.text_encoder.config.to_diff_dict().items()
                                if not k.startswith("_")},
               "scheduler": dict(pipe.scheduler.config)}
    metadata = {CONFIGS_METADATA_KEY: json.dumps(configs, default=jsonable)}
    if qwen:
        original = pipe.transformer.state_dict()
        names = ("qwen_image.safetensors", "qwen_2.5_vl.safetensors")
        text = pipe.text_encoder.state_dict()
    elif z_image:
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
    if qwen:
        vae = {k: v.contiguous() for k, v in wan_vae_to_original(pipe.vae.state_dict()).items()}
        save_file(vae, str(folder / "qwen_image_vae.safetensors"))
    else:
        ldm = {k.removeprefix("first_stage_model."): v.contiguous()
               for k, v in vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)).items()}
        save_file(ldm, str(folder / "ae.safetensors"))
    save_file({k: v.contiguous() for k, v in text.items()}, str(folder / names[1]))
    pipe.tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder
