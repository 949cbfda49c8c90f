"""Control models: find and load ControlNets and T2I-Adapters, offline, from folders and single files.

Accepted forms (pickles only through `sfumato convert --allow-pickle`):
- a diffusers folder (`config.json` + weights): ControlNetModel, ControlNetUnionModel or T2IAdapter;
- a single `.safetensors` in the diffusers layout or the original one (`control_model.*` / `input_hint_block.*`,
  as A1111 uses), converted by diffusers' own key mapping. Its config comes from the file's metadata (written by
  sfumato), a sibling `NAME.json`, or the family skeleton matched by the cross-attention width (SD1 768, SD2 1024,
  SDXL 2048), so nothing is fetched.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.control.files import (CLASSES, CROSS_ATTENTION_FAMILIES, EMBEDDED_CONTROLNETS, FLOW_KINDS,  # noqa: F401
                                   controlnet_dir, embedded_controlnet, list_control_models, resolve)
from sfumato.models import home

CONFIG_METADATA_KEY = "sfumato.config"


@dataclass
class ControlModel:
    name: str
    path: Path
    kind: str  # controlnet / t2i-adapter
    module: torch.nn.Module
    preprocessor: str | None = None  # the map it was trained on, when its folder says (sfumato.json)
    base: str | None = None  # the model it was trained for, when known


def load_control_model(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       name: str | None = None) -> ControlModel:
    """Load a ControlNet / T2I-Adapter from a diffusers folder or a single safetensors file."""
    home.refuse_pickle(path)
    if path.is_dir():
        config = _read_json(path / "config.json")
        module = _model_class(config).from_pretrained(str(path), torch_dtype=dtype)
        extra = _read_json(path / "sfumato.json") if (path / "sfumato.json").exists() else {}
    else:
        state, config = read_single_file(path)
        module = _model_class(config).from_config(config)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise UnsupportedModel(f"{path}: weights do not fit the control model config "
                                   f"({str(exc).splitlines()[0][:200]})") from None
        module = module.to(dtype)
        extra = {}
    module = module.to(device).eval().requires_grad_(False)
    return ControlModel(name or (path.name if path.is_dir() else path.stem), path, CLASSES[config["_class_name"]],
                        module, extra.get("preprocessor"), extra.get("base"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"cannot read {path}: {exc}") from None


def _model_class(config: dict[str, Any]):
    import diffusers

    name = config.get("_class_name")
    if name not in CLASSES:
        raise UnsupportedModel(f"not a control model: config class {name!r} (expected {', '.join(CLASSES)})")
    return getattr(diffusers, name)


def read_single_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The diffusers-layout state dict and config of a single-file ControlNet (either layout)."""
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise UnsupportedModel(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") from None
    config = None
    if CONFIG_METADATA_KEY in metadata:
        config = json.loads(metadata[CONFIG_METADATA_KEY])
    elif path.with_suffix(".json").exists():
        config = _read_json(path.with_suffix(".json"))
    original = any(k.startswith(("control_model.", "input_hint_block.", "zero_convs.")) for k in state)
    if config is None:
        config = skeleton_config(state, original)
    if original:
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        plain = {k.removeprefix("control_model."): v for k, v in state.items()}
        state = {k: v for k, v in convert_controlnet_checkpoint(state, config).items() if v is not None}
        for index, name in (("0", "linear_1"), ("2", "linear_2")):  # SDXL's added embedding, unmapped by diffusers
            for leaf in ("weight", "bias"):
                if f"label_emb.0.{index}.{leaf}" in plain:
                    state.setdefault(f"add_embedding.{name}.{leaf}", plain[f"label_emb.0.{index}.{leaf}"])
        # diffusers maps the hint block for SD's four-level embedding; a shorter one ends in its conv_out earlier
        last = 2 * (len(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1)
        for leaf in ("weight", "bias"):
            key = f"controlnet_cond_embedding.blocks.{last}.{leaf}"
            if key in state:
                state[f"controlnet_cond_embedding.conv_out.{leaf}"] = state.pop(key)
    return state, config


def skeleton_config(state: dict[str, torch.Tensor], original: bool) -> dict[str, Any]:
    """A ControlNet config for a file without one: the family's UNet skeleton picked by cross-attention width."""
    from diffusers import ControlNetModel

    from sfumato.models.families import FAMILIES

    pattern = r"(^|\.)(attn2\.to_k|attn2\.to_k)\.weight$"
    widths = {v.shape[1] for k, v in state.items() if re.search(pattern, k) and v.dim() == 2}
    family = CROSS_ATTENTION_FAMILIES.get(max(widths)) if widths else None
    if family is None:
        raise UnsupportedModel("cannot tell which model family this ControlNet is for (no config in the file and no "
                               "NAME.json next to it); put its diffusers config.json next to it as NAME.json")
    allowed = set(inspect.signature(ControlNetModel.__init__).parameters)
    config = {k: v for k, v in FAMILIES[family].skeleton["unet"].items() if k in allowed}
    hint = next((v for k, v in state.items() if k.endswith(("input_hint_block.0.weight",
                                                            "controlnet_cond_embedding.conv_in.weight"))), None)
    if hint is not None:
        config["conditioning_channels"] = int(hint.shape[1])
    return {"_class_name": "ControlNetModel", **config}


# ------------------------------------------------------------------ writing single files


def save_single_file(module: torch.nn.Module, path: Path, layout: str = "diffusers", half: bool = False) -> Path:
    """Write a ControlNet as one safetensors file (diffusers layout, or A1111's original `control_model.*`);
    its config rides in the metadata so it loads back without anything else."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    config = dict(module.config)
    if layout == "original":
        state = {f"control_model.{k}": v for k, v in controlnet_to_original(state, config).items()}
    elif layout != "diffusers":
        raise InvalidRequest(f"layout must be diffusers or original, got {layout!r}")
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    config = {"_class_name": type(module).__name__, **{k: v for k, v in config.items() if not k.startswith("_")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(config, default=list)})
    return path


def controlnet_to_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers ControlNet keys -> the original ControlNet layout (without the `control_model.` prefix)."""
    from sfumato.models.singlefile import UNET_PREFIX, unet_to_ldm

    own = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
    shared = unet_to_ldm({k: v for k, v in state.items() if not k.startswith(own)}, {**config, "up_block_types": []})
    out = {k.removeprefix(UNET_PREFIX): v for k, v in shared.items()}
    blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    for key, value in state.items():
        if key.startswith("controlnet_cond_embedding.conv_in."):
            out["input_hint_block.0." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("controlnet_cond_embedding.blocks."):
            index, leaf = key.split(".")[2], key.rsplit(".", 1)[1]
            out[f"input_hint_block.{2 * (int(index) + 1)}.{leaf}"] = value
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            out[f"input_hint_block.{2 * (blocks + 1)}.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith("controlnet_down_blocks."):
            index, leaf = key.split(".")[1], key.rsplit(".", 1)[1]
            out[f"zero_convs.{index}.0.{leaf}"] = value
        elif key.startswith("controlnet_mid_block."):
            out[f"middle_block_out.0.{key.rsplit('.', 1)[1]}"] = value
    return out
