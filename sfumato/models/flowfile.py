"""Single files of the flow-transformer families (SD3/SD3.5 and FLUX.1): read offline, and write.

The layouts are the originals: Stability's `model.diffusion_model.joint_blocks.*` (sd3_medium_incl_clips*.safetensors)
and Black Forest Labs' `double_blocks.*` / `single_blocks.*` (bare, or under `model.diffusion_model.` in ComfyUI's
all-in-one checkpoints), the VAE under `first_stage_model.` or `vae.`, the text encoders in transformers' layout under
`text_encoders.{clip_l,clip_g,t5xxl}.transformer.`. One table of rules maps transformer keys both ways (fused q/k/v
and FLUX's fused single-block projection split and joined, final adaLN shift/scale swapped), for any model width.
Configs come from the file's metadata when we wrote it, else are read off the tensor shapes (widths, depths, head
size from the q/k norms); the scheduler is the family's (FLUX.1-schnell, without a guidance embedder: shift 1). No
T5 tokenizer ships in any registry, so a T5 encoder needs one: in the file's metadata (files we write carry it) or in
`$SFUMATO_HOME/models/tokenizers/t5/` (a transformers tokenizer folder, e.g. google/t5-v1_1-xxl's). A file that
holds only the transformer (BFL's flux1-dev.safetensors) is refused with that explanation; `assemble` joins it with
the separate files ComfyUI users keep (ae.safetensors, clip_l/clip_g, t5xxl) into one all-in-one file.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import torch

from sfumato.errors import UnsupportedModel
from sfumato.models.info import CONFIGS_METADATA_KEY, ModelInfo

PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
TEXT = {  # family -> component -> (key prefix, kind)
    "sd3": {"text_encoder": ("text_encoders.clip_l.transformer.", "clip"),
            "text_encoder_2": ("text_encoders.clip_g.transformer.", "clip"),
            "text_encoder_3": ("text_encoders.t5xxl.transformer.", "t5")},
    "flux": {"text_encoder": ("text_encoders.clip_l.transformer.", "clip"),
             "text_encoder_2": ("text_encoders.t5xxl.transformer.", "t5")},
}
CLIP_PADS = {("sd3", "tokenizer"): "<|endoftext|>", ("sd3", "tokenizer_2"): "!", ("flux", "tokenizer"): "<|endoftext|>"}
CLIP_ACTS = {("sd3", "text_encoder_2"): "gelu"}  # CLIP-G; CLIP-L is quick_gelu
T5_TOKENIZER_KEY = "sfumato.t5_tokenizer"
SCHEDULERS = {
    "sd3": {"shift": 3.0},
    "flux": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
             "base_image_seq_len": 256, "max_image_seq_len": 4096},
    "flux-schnell": {"shift": 1.0, "use_dynamic_shifting": False},
}
VAE_FACTORS = {"sd3": {"scaling_factor": 1.5305, "shift_factor": 0.0609},
               "flux": {"scaling_factor": 0.3611, "shift_factor": 0.1159}}


# ------------------------------------------------------------------------------------------ transformer key rules

Rule = tuple[str, list[str], str]  # (original name, diffusers names, kind: copy | fuse | swap)


def _count(keys, pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _linear(original: str, diffusers: str | list[str], kind: str = "copy") -> list[Rule]:
    names = [diffusers] if isinstance(diffusers, str) else diffusers
    return [(f"{original}.{p}", [f"{n}.{p}" for n in names], kind) for p in ("weight", "bias")]


def flux_rules(keys, original: bool) -> list[Rule]:
    """FLUX.1 rules; `keys` are original (`original`) or diffusers names, to count the blocks."""
    double = _count(keys, r"double_blocks\.(\d+)\." if original else r"transformer_blocks\.(\d+)\.")
    single = _count(keys, r"single_blocks\.(\d+)\." if original else r"single_transformer_blocks\.(\d+)\.")
    rules = (_linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
             + _linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
             + _linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
             + _linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
             + _linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
             + _linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
             + _linear("txt_in", "context_embedder") + _linear("img_in", "x_embedder")
             + _linear("final_layer.linear", "proj_out") + _linear("final_layer.adaLN_modulation.1", "norm_out.linear", "swap"))
    for i in range(double):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        rules += (_linear(o + "img_mod.lin", d + "norm1.linear") + _linear(o + "txt_mod.lin", d + "norm1_context.linear")
                  + _linear(o + "img_attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], "fuse")
                  + _linear(o + "txt_attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"], "fuse")
                  + _linear(o + "img_mlp.0", d + "ff.net.0.proj") + _linear(o + "img_mlp.2", d + "ff.net.2")
                  + _linear(o + "txt_mlp.0", d + "ff_context.net.0.proj") + _linear(o + "txt_mlp.2", d + "ff_context.net.2")
                  + _linear(o + "img_attn.proj", d + "attn.to_out.0") + _linear(o + "txt_attn.proj", d + "attn.to_add_out"))
        rules += [(o + "img_attn.norm.query_norm.scale", [d + "attn.norm_q.weight"], "copy"),
                  (o + "img_attn.norm.key_norm.scale", [d + "attn.norm_k.weight"], "copy"),
                  (o + "txt_attn.norm.query_norm.scale", [d + "attn.norm_added_q.weight"], "copy"),
                  (o + "txt_attn.norm.key_norm.scale", [d + "attn.norm_added_k.weight"], "copy")]
    for i in range(single):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        rules += (_linear(o + "modulation.lin", d + "norm.linear") + _linear(o + "linear2", d + "proj_out")
                  + _linear(o + "linear1", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"], "fuse"))
        rules += [(o + "norm.query_norm.scale", [d + "attn.norm_q.weight"], "copy"),
                  (o + "norm.key_norm.scale", [d + "attn.norm_k.weight"], "copy")]
    return rules


def sd3_rules(keys, original: bool) -> list[Rule]:
    """SD3 / SD3.5 (MM-DiT) rules; the last block has no context output (its context adaLN is shift/scale only)."""
    layers = _count(keys, r"joint_blocks\.(\d+)\." if original else r"transformer_blocks\.(\d+)\.")
    rules: list[Rule] = [("pos_embed", ["pos_embed.pos_embed"], "copy")]
    rules += (_linear("x_embedder.proj", "pos_embed.proj") + _linear("context_embedder", "context_embedder")
              + _linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
              + _linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
              + _linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
              + _linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
              + _linear("final_layer.linear", "proj_out") + _linear("final_layer.adaLN_modulation.1", "norm_out.linear", "swap"))
    for i in range(layers):
        o, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        last = i == layers - 1
        rules += (_linear(o + "x_block.attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], "fuse")
                  + _linear(o + "context_block.attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"],
                            "fuse")
                  + _linear(o + "x_block.attn.proj", d + "attn.to_out.0")
                  + _linear(o + "x_block.attn2.qkv", [d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"], "fuse")
                  + _linear(o + "x_block.attn2.proj", d + "attn2.to_out.0")
                  + _linear(o + "x_block.adaLN_modulation.1", d + "norm1.linear")
                  + _linear(o + "context_block.adaLN_modulation.1", d + "norm1_context.linear", "swap" if last else "copy")
                  + _linear(o + "x_block.mlp.fc1", d + "ff.net.0.proj") + _linear(o + "x_block.mlp.fc2", d + "ff.net.2"))
        if not last:
            rules += (_linear(o + "context_block.attn.proj", d + "attn.to_add_out")
                      + _linear(o + "context_block.mlp.fc1", d + "ff_context.net.0.proj")
                      + _linear(o + "context_block.mlp.fc2", d + "ff_context.net.2"))
        for block, attn, names in (("x_block", "attn", ("norm_q", "norm_k")), ("context_block", "attn", ("norm_added_q", "norm_added_k")),
                                   ("x_block", "attn2", ("norm_q", "norm_k"))):
            target = "attn2" if attn == "attn2" else "attn"
            rules += [(f"{o}{block}.{attn}.ln_q.weight", [f"{d}{target}.{names[0]}.weight"], "copy"),
                      (f"{o}{block}.{attn}.ln_k.weight", [f"{d}{target}.{names[1]}.weight"], "copy")]
    return rules


def chroma_rules(keys, original: bool) -> list[Rule]:
    """Chroma: FLUX's blocks without their modulation layers (rules for absent keys are skipped both ways), and the
    distilled guidance approximator that replaces them."""
    layers = _count(keys, r"distilled_guidance_layer\.layers\.(\d+)\.")
    g = "distilled_guidance_layer."
    rules = flux_rules(keys, original) + _linear(g + "in_proj", g + "in_proj") + _linear(g + "out_proj", g + "out_proj")
    for i in range(layers):
        rules += (_linear(f"{g}layers.{i}.in_layer", f"{g}layers.{i}.linear_1")
                  + _linear(f"{g}layers.{i}.out_layer", f"{g}layers.{i}.linear_2"))
        rules.append((f"{g}norms.{i}.scale", [f"{g}norms.{i}.weight"], "copy"))
    return rules


RULES: dict[str, Callable[[Any, bool], list[Rule]]] = {"sd3": sd3_rules, "flux": flux_rules, "chroma": chroma_rules}


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(original: dict[str, torch.Tensor], family: str, path=None) -> dict[str, torch.Tensor]:
    """Original transformer keys (no prefix) -> diffusers keys; every key must be used."""
    out: dict[str, torch.Tensor] = {}
    used = set()
    for name, targets, kind in RULES[family](original.keys(), True):
        if name not in original:
            continue
        value = original[name]
        used.add(name)
        if kind == "swap":
            out[targets[0]] = _swap(value)
        elif kind == "fuse":
            if len(targets) == 4:  # FLUX single block: q, k, v (width each) then the MLP input projection
                width = original[name.replace("linear1", "linear2").replace(".bias", ".weight")].shape[0]
                parts = torch.split(value, [width, width, width, value.shape[0] - 3 * width], dim=0)
            else:
                parts = value.chunk(3, dim=0)
            out.update({target: part.clone() for target, part in zip(targets, parts)})
        else:
            out[targets[0]] = value
    left = sorted(set(original) - used)
    if left:
        raise UnsupportedModel(f"{path or 'file'}: {len(left)} {family} transformer weights have no known place "
                               f"(e.g. {left[:3]}); not a supported {family} layout")
    return out


def to_original(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Diffusers transformer keys -> the original layout (no prefix); every key must be used."""
    out: dict[str, torch.Tensor] = {}
    used = set()
    for name, sources, kind in RULES[family](state.keys(), False):
        if not all(source in state for source in sources):
            continue
        used.update(sources)
        if kind == "swap":
            out[name] = _swap(state[sources[0]])
        elif kind == "fuse":
            out[name] = torch.cat([state[source] for source in sources], dim=0)
        else:
            out[name] = state[sources[0]]
    left = sorted(set(state) - used)
    if left:
        raise UnsupportedModel(f"{len(left)} {family} transformer weights have no single-file name (e.g. {left[:3]})")
    return out


# ------------------------------------------------------------------------------------- configs from tensor shapes


def transformer_config(family: str, original: dict[str, torch.Tensor]) -> dict[str, Any]:
    shape = {k: tuple(v.shape) for k, v in original.items()}
    if family == "flux":
        width, channels = shape["img_in.weight"]
        head = shape["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        if head != 128:
            raise UnsupportedModel(f"FLUX transformer with {head}-wide heads: its rotary axes are not known without "
                                   "the config metadata sfumato writes")
        return {"patch_size": 1, "in_channels": channels, "out_channels": shape["final_layer.linear.weight"][0],
                "num_layers": _count(original, r"double_blocks\.(\d+)\."),
                "num_single_layers": _count(original, r"single_blocks\.(\d+)\."), "attention_head_dim": head,
                "num_attention_heads": width // head, "joint_attention_dim": shape["txt_in.weight"][1],
                "pooled_projection_dim": shape["vector_in.in_layer.weight"][1],
                "guidance_embeds": "guidance_in.in_layer.weight" in original, "axes_dims_rope": [16, 56, 56]}
    width, channels, patch, _ = shape["x_embedder.proj.weight"]
    layers = _count(original, r"joint_blocks\.(\d+)\.")
    norm = shape.get("joint_blocks.0.x_block.attn.ln_q.weight")
    head = norm[0] if norm else 64
    return {"sample_size": 128, "patch_size": patch, "in_channels": channels,
            "out_channels": shape["final_layer.linear.weight"][0] // (patch * patch), "num_layers": layers,
            "attention_head_dim": head, "num_attention_heads": width // head,
            "joint_attention_dim": shape["context_embedder.weight"][1],
            "caption_projection_dim": shape["context_embedder.weight"][0],
            "pooled_projection_dim": shape["y_embedder.mlp.0.weight"][1],
            "pos_embed_max_size": int(round(shape["pos_embed"][1] ** 0.5)),
            "dual_attention_layers": [i for i in range(layers) if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in original],
            "qk_norm": "rms_norm" if norm else None}


def vae_config(family: str, ldm: dict[str, torch.Tensor]) -> dict[str, Any]:
    blocks = _count(ldm, r"encoder\.down\.(\d+)\.")
    return {"in_channels": 3, "out_channels": 3, "latent_channels": ldm["decoder.conv_in.weight"].shape[1],
            "block_out_channels": [ldm[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(blocks)],
            "down_block_types": ["DownEncoderBlock2D"] * blocks, "up_block_types": ["UpDecoderBlock2D"] * blocks,
            "layers_per_block": _count(ldm, r"encoder\.down\.0\.block\.(\d+)\."), "norm_num_groups": 32,
            "sample_size": 1024, "use_quant_conv": "quant_conv.weight" in ldm,
            "use_post_quant_conv": "post_quant_conv.weight" in ldm, **VAE_FACTORS[family]}


def clip_config(state: dict[str, torch.Tensor], act: str) -> dict[str, Any]:
    vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
    return {"vocab_size": vocab, "hidden_size": width,
            "intermediate_size": state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_hidden_layers": _count(state, r"text_model\.encoder\.layers\.(\d+)\."),
            "num_attention_heads": max(1, width // 64), "max_position_embeddings":
                state["text_model.embeddings.position_embedding.weight"].shape[0], "hidden_act": act,
            "projection_dim": state["text_projection.weight"].shape[0], "bos_token_id": 0, "eos_token_id": 2,
            "pad_token_id": 1, "layer_norm_eps": 1e-5}


def t5_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    vocab, width = state["shared.weight"].shape
    buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    ff = state["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    return {"vocab_size": vocab, "d_model": width, "d_ff": ff, "num_layers": _count(state, r"encoder\.block\.(\d+)\."),
            "num_heads": heads, "d_kv": state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
            "relative_attention_num_buckets": buckets, "feed_forward_proj": "gated-gelu" if gated else "relu",
            "pad_token_id": 0, "eos_token_id": 1, "is_encoder_decoder": False, "use_cache": False}


# ------------------------------------------------------------------------------------------------------ loading


def load_flow_pipeline(info: ModelInfo, dtype: torch.dtype):
    """An SD3 or FLUX single file as its diffusers pipeline."""
    import diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(info.path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    parts = load_flow_components(info, load_file(str(info.path)), metadata, dtype)
    return getattr(diffusers, info.family.pipeline_class)(**parts)


def load_flow_components(info: ModelInfo, checkpoint: dict[str, torch.Tensor], metadata: dict[str, str],
                         dtype: torch.dtype) -> dict[str, Any]:
    """The diffusers components (pipeline keyword arguments) of an SD3 or FLUX single file."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    family = info.family.name
    configs = json.loads(metadata[CONFIGS_METADATA_KEY]) if CONFIGS_METADATA_KEY in metadata else {}
    original = {k.removeprefix(PREFIX): v for k, v in checkpoint.items()
                if not k.startswith(VAE_PREFIXES + ("text_encoders.",))}
    vae_prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in checkpoint)), None)
    missing = [] if vae_prefix else ["the VAE"]
    for prefix, kind in TEXT[family].values():  # T5 may be absent (SD3 runs without it; FLUX says so below)
        if kind == "clip" and not any(k.startswith(prefix) for k in checkpoint):
            missing.append(f"text encoder {prefix.split('.')[1]}")
    if missing:
        raise UnsupportedModel(f"{info.path}: this {family} file holds only part of the model (no {', '.join(missing)}); "
                               f"join it with its VAE and text-encoder files (`sfumato convert {info.path.name} "
                               f"OUT.safetensors --add ae.safetensors --add clip_l.safetensors ...`) or use a "
                               f"diffusers folder")
    config = configs.get("transformer") or transformer_config(family, original)
    cls = diffusers.SD3Transformer2DModel if family == "sd3" else diffusers.FluxTransformer2DModel
    parts: dict[str, Any] = {"transformer": _build(cls.from_config, config, to_diffusers(original, family, info.path), info,
                                                   "transformer", dtype)}
    ldm_vae = {k[len(vae_prefix):]: v for k, v in checkpoint.items() if k.startswith(vae_prefix)}
    vae_cfg = configs.get("vae") or vae_config(family, ldm_vae)
    vae_state = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in ldm_vae.items()}, vae_cfg)
    parts["vae"] = _build(diffusers.AutoencoderKL.from_config, vae_cfg, vae_state, info, "VAE", dtype)
    for component, (prefix, kind) in TEXT[family].items():
        state = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        token_component = component.replace("text_encoder", "tokenizer")
        if kind == "clip":
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            from sfumato.models.keys import clip_tokenizer, to_model_keys

            config = configs.get(component) or clip_config(state, CLIP_ACTS.get((family, component), "quick_gelu"))
            model_cls = CLIPTextModel if family == "flux" else CLIPTextModelWithProjection
            if family == "flux":
                state.pop("text_projection.weight", None)
            model = _build(lambda c: model_cls(CLIPTextConfig(**c)), config, None, info, component, dtype)
            _load(model, to_model_keys(state, model), info, component)
            parts[component] = model.eval()
            pad = configs.get(token_component, {}).get("pad_token") or CLIP_PADS[(family, token_component)]
            parts[token_component] = clip_tokenizer(pad)
        else:
            parts[component], parts[token_component] = _t5(state, configs.get(component), metadata, info, component,
                                                            family, dtype)
    variant = "flux-schnell" if family == "flux" and not config.get("guidance_embeds", True) else family
    scheduler = configs.get("scheduler") or {"_class_name": "FlowMatchEulerDiscreteScheduler", **SCHEDULERS[variant]}
    parts["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler)
    return parts


def _t5(state, config, metadata, info, component, family, dtype):
    """The T5 encoder and its tokenizer (None, None for an SD3 file without T5 weights)."""
    if not state:
        if family == "flux":
            raise UnsupportedModel(f"{info.path}: FLUX needs its T5 text encoder (text_encoders.t5xxl.*), which this "
                                   "file does not hold")
        return None, None
    tokenizer = t5_tokenizer(metadata, info)
    return t5_encoder(state, config, info, component, dtype), tokenizer


def t5_encoder(state: dict[str, torch.Tensor], config: dict[str, Any] | None, info: ModelInfo, what: str,
               dtype: torch.dtype):
    """A T5 encoder from its weights in transformers' layout (a decoder and LM head, if the file has them, dropped);
    its config from `config` or the shapes."""
    from transformers import T5Config, T5EncoderModel

    state = {k: v for k, v in state.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    model = _build(lambda c: T5EncoderModel(T5Config(**c)), config or t5_config(state), None, info, what, dtype)
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    _load(model, state, info, what)
    return model.eval()


def t5_tokenizer(metadata: dict[str, str], info: ModelInfo):
    """A T5 tokenizer from the file's metadata, or from $SFUMATO_HOME/models/tokenizers/t5."""
    from transformers import AutoTokenizer, T5TokenizerFast

    if T5_TOKENIZER_KEY in metadata:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tokenizer.json").write_text(metadata[T5_TOKENIZER_KEY])
            return T5TokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"), extra_ids=0)
    from sfumato.models.home import home

    folder = home() / "models" / "tokenizers" / "t5"
    if folder.is_dir():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    raise UnsupportedModel(f"{info.path}: its T5 text encoder needs a T5 tokenizer, and none ships offline: put one "
                           f"(tokenizer.json or spiece.model, e.g. from google/t5-v1_1-xxl) in {folder}")


def _build(factory, config: dict[str, Any], state, info: ModelInfo, what: str, dtype: torch.dtype):
    from accelerate import init_empty_weights

    try:
        with init_empty_weights():
            model = factory(config)
    except (TypeError, ValueError) as exc:
        raise UnsupportedModel(f"{info.path}: bad {what} config ({exc})") from None
    if state is not None:
        _load(model, state, info, what)
    first = next(iter(model.parameters()), None)
    return model.to(dtype) if first is not None and first.dtype != dtype else model


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor], info: ModelInfo, what: str) -> None:
    expected = set(model.state_dict())
    ignorable = {"text_model.embeddings.position_ids", "encoder.embed_tokens.weight"}
    missing, unexpected = sorted(expected - set(state) - ignorable), sorted(set(state) - expected)
    if missing or unexpected:
        raise UnsupportedModel(f"{info.path}: {what} weights do not match its config ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[:3]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(model.state_dict()[key].shape):
            raise UnsupportedModel(f"{info.path}: {what} weight {key} has shape {tuple(value.shape)}, its config "
                                   f"expects {tuple(model.state_dict()[key].shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


# ------------------------------------------------------------------------------------------------------ writing


def flow_checkpoint(components: dict[str, Any], info: ModelInfo, half: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An SD3/FLUX pipeline's components -> one all-in-one file in the original layout, and its metadata (configs,
    tokenizer pads, the T5 tokenizer)."""
    from sfumato.models.keys import canonical_text_keys, jsonable, vae_to_ldm

    family = info.family.name
    transformer, vae = components["transformer"], components["vae"]
    state = {PREFIX + k: v for k, v in to_original(transformer.state_dict(), family).items()}
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    configs: dict[str, Any] = {"transformer": dict(transformer.config), "vae": dict(vae.config),
                               "scheduler": dict(components["scheduler"].config)}
    metadata: dict[str, str] = {}
    for component, (prefix, kind) in TEXT[family].items():
        encoder = components.get(component)
        if encoder is None:
            continue
        encoder_state = canonical_text_keys(encoder.state_dict()) if kind == "clip" else encoder.state_dict()
        state.update({prefix + k: v for k, v in encoder_state.items()
                      if not k.endswith("position_ids") and k != "encoder.embed_tokens.weight"})
        configs[component] = {k: v for k, v in encoder.config.to_diff_dict().items() if not k.startswith("_")}
        tokenizer = components[component.replace("text_encoder", "tokenizer")]
        if kind == "clip":
            configs[component.replace("text_encoder", "tokenizer")] = {"pad_token": str(tokenizer.pad_token)}
        else:
            metadata[T5_TOKENIZER_KEY] = tokenizer.backend_tokenizer.to_str()
    dtype = torch.float16 if half else None
    state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata.update({CONFIGS_METADATA_KEY: json.dumps(configs, default=jsonable), "sfumato.family": family,
                     "sfumato.prediction_type": "flow"})
    return state, metadata


# ------------------------------------------------------------------------------------- split files -> one file


def part_kind(keys: set[str], path) -> tuple[str, str]:
    """(what, key prefix in an all-in-one file) of a separate component file: a VAE, CLIP-L, CLIP-G or T5."""
    if any(k.startswith(VAE_PREFIXES) for k in keys) or "decoder.conv_in.weight" in keys or \
            "encoder.down_blocks.0.resnets.0.conv1.weight" in keys:
        return "vae", "first_stage_model."
    if "shared.weight" in keys or any(k.startswith("encoder.block.") for k in keys):
        return "t5xxl", "text_encoders.t5xxl.transformer."
    if "text_model.embeddings.token_embedding.weight" in keys:
        return "clip", "text_encoders.{}.transformer."
    raise UnsupportedModel(f"{path}: not a VAE, CLIP or T5 file (its keys are none of theirs)")


def assemble(transformer_file, parts: list, out) -> dict[str, int]:
    """An all-in-one SD3/FLUX file from a transformer-only file and separate VAE / text-encoder files (CLIP-L vs
    CLIP-G told apart by file name, else by width, 768 vs 1280); returns tensors per part. Dtypes are kept."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from sfumato.models.info import family_from_keys

    state = load_file(str(transformer_file))
    family = family_from_keys(set(state), Path(transformer_file)).name
    if family not in TEXT:
        raise UnsupportedModel(f"{transformer_file}: not an SD3 or FLUX transformer")
    out_state = {(k if k.startswith(PREFIX) else PREFIX + k): v for k, v in state.items()
                 if not k.startswith(VAE_PREFIXES + ("text_encoders.",))}
    counts = {"transformer": len(out_state)}
    for part in parts:
        tensors = load_file(str(part))
        what, prefix = part_kind(set(tensors), part)
        if what == "vae":
            tensors = {next((k[len(p):] for p in VAE_PREFIXES if k.startswith(p)), k): v for k, v in tensors.items()}
            if any(k.startswith("encoder.down_blocks.") for k in tensors):  # a diffusers AutoencoderKL file
                from sfumato.models.keys import VAE_PREFIX, vae_to_ldm

                blocks = _count(tensors, r"encoder\.down_blocks\.(\d+)\.")
                tensors = {k[len(VAE_PREFIX):]: v for k, v in vae_to_ldm(tensors, {"block_out_channels": [0] * blocks}).items()}
        if what == "clip":  # by its file name as ComfyUI names them, else by width (CLIP-G 1280, CLIP-L 768)
            width = tensors["text_model.embeddings.token_embedding.weight"].shape[1]
            stem = Path(part).stem.lower()
            what = "clip_g" if "clip_g" in stem else "clip_l" if "clip_l" in stem else \
                "clip_g" if width == 1280 else "clip_l"
            prefix = prefix.format(what)
        if what in ("clip_g", "t5xxl") and what not in {p.split(".")[1] for p, _ in TEXT[family].values()}:
            raise UnsupportedModel(f"{part}: {family} has no {what} text encoder")
        out_state.update({prefix + k: v.contiguous() for k, v in tensors.items()})
        counts[what] = len(tensors)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    from safetensors import safe_open

    with safe_open(str(transformer_file), "pt") as handle:  # configs and tokenizer a file we wrote carries
        kept = {k: v for k, v in (handle.metadata() or {}).items() if k.startswith("sfumato.")}
    save_file(out_state, str(tmp), metadata={**kept, "format": "pt", "sfumato.family": family})
    tmp.replace(out)
    return counts
