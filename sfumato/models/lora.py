"""LoRA files (diffusers/peft or kohya/A1111 layout) attached to a loaded model with per-request weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


from sfumato.errors import UnsupportedModel
from sfumato.models.home import open_weights, refuse_pickle, resolve, short_hash
from sfumato.models.loader import LoadedModel


def lora_hashes(loras: list[tuple[str, float]]) -> dict[str, str]:
    return {resolve(name, "lora").stem: short_hash(resolve(name, "lora")) for name, _ in loras}


def check_loras(loras: list[tuple[str, float]]) -> None:
    """Fail early (before any work) when a LoRA does not exist or is a pickle."""
    for name, _ in loras:
        path = resolve(name, "lora")
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise UnsupportedModel(f"LoRA {path} must be a .safetensors file")


ADAPTER_METADATA_KEY = "sfumato.adapter"


def adapter_kind(path: Path) -> str:
    """"lora" for LoRA files (any layout), or the peft method recorded by `sfumato train` (e.g. "oft")."""
    with open_weights(path) as handle:
        return (handle.metadata() or {}).get(ADAPTER_METADATA_KEY, "lora")


def _load_peft_adapter(model: LoadedModel, path: Path, adapter: str) -> None:
    """A UNet peft adapter (OFT) saved with its peft config in the file's metadata."""
    import peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    with open_weights(path) as handle:
        settings = json.loads(handle.metadata()["peft_config"])
    cls = {"OFT": peft.OFTConfig}.get(settings.get("peft_type"))
    if cls is None:
        raise UnsupportedModel(f"{path}: unsupported adapter type {settings.get('peft_type')!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in settings.items() if k in fields and k not in ("peft_type", "task_type")})
    model.pipe.unet.add_adapter(config, adapter_name=adapter)
    set_peft_model_state_dict(model.pipe.unet, load_file(str(path)), adapter_name=adapter)


def takes_loras(family: str) -> bool:
    """Whether a family's diffusers pipeline loads LoRAs (its `load_lora_weights`)."""
    import diffusers

    from sfumato.models.families import FAMILIES

    return hasattr(getattr(diffusers, FAMILIES[family].pipeline_class), "load_lora_weights")


def apply_loras(model: LoadedModel, loras: list[tuple[str, float]]) -> None:
    """Activate exactly these LoRAs/adapters at these weights (loading each file once); none -> all off."""
    from sfumato.models.lycoris import apply_networks, is_lycoris

    active = [(resolve(name, "lora"), weight) for name, weight in loras if weight != 0]
    for path, _ in active:
        refuse_pickle(path)
    networks = [(path, weight) for path, weight in active if is_lycoris(path)]
    apply_networks(model, networks)  # LoHa/LoKr/full: weight patches (none -> originals back)
    active = [(path, weight) for path, weight in active if (path, weight) not in networks]
    if not active:
        if model.loras:
            model.pipe.disable_lora()
        return
    if not hasattr(model.pipe, "load_lora_weights"):
        raise UnsupportedModel(f"{model.family} models take no LoRAs yet (diffusers has no LoRA loader for them)")
    names, weights, kinds = [], [], set()
    for path, weight in active:
        adapter = f"lora_{short_hash(path)}"
        kind = adapter_kind(path)
        kinds.add(kind)
        if kind != "lora" and weight != 1.0:
            raise UnsupportedModel(f"{path} is a {kind.upper()} adapter: it applies at weight 1 only")
        if adapter not in model.loras:
            try:
                if kind == "lora":
                    model.pipe.load_lora_weights(str(path), adapter_name=adapter)
                else:
                    _load_peft_adapter(model, path, adapter)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise UnsupportedModel(f"LoRA {path} does not fit this {model.family} model ({exc})") from None
            model.loras[adapter] = str(path)
        names.append(adapter)
        weights.append(weight)
    model.pipe.enable_lora()
    if kinds == {"lora"}:
        model.pipe.set_adapters(names, adapter_weights=weights)
    elif len(names) == 1:
        _activate_unet_adapter(model, names[0])
    else:
        raise UnsupportedModel("an OFT adapter cannot be combined with other LoRAs/adapters yet; use one at a time")


def _activate_unet_adapter(model: LoadedModel, adapter: str) -> None:
    """Make `adapter` the only active UNet adapter (peft's OFT layers have no per-adapter scale to set)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.pipe.unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(True)
            module.set_adapter(adapter if adapter in module._get_available_adapters() else [])
