"""Key rules and shared pieces of the single-file formats (LDM and flow layouts): CLIP text keys, the LDM VAE
layout, the packaged CLIP tokenizer, and JSON for configs stored in metadata."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

CONFIGS_DIR = Path(__file__).parent / "configs"
CLIP_TOKENIZER_DIR = CONFIGS_DIR / "tokenizers" / "clip"
VAE_PREFIX = "first_stage_model."


def clip_tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(CLIP_TOKENIZER_DIR / "vocab.json"), str(CLIP_TOKENIZER_DIR / "merges.txt"), pad_token=pad_token,
        model_max_length=77,
    )


def canonical_text_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP text weights with the hub's `text_model.` prefix (transformers 5 drops it for CLIPTextModel)."""
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in state.items()}


def to_model_keys(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Canonical CLIP text keys -> the key form `model.state_dict()` uses."""
    if any(key.startswith("text_model.") for key in model.state_dict()):
        return canonical_text_keys(state)
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    n_blocks = len(config["block_out_channels"])
    rules = [
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
         lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample."),
    ]
    attention_parts = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        if ".attn_1." in new:
            head, _, leaf = new.rpartition(".")
            base, _, part = head.partition(".attn_1.")
            new = f"{base}.attn_1.{attention_parts.get(part, part)}.{leaf}"
            if leaf == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)
