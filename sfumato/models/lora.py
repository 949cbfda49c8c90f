"""LoRA files (diffusers/peft or kohya/A1111 layout) attached to a loaded model with per-request weights."""

from __future__ import annotations

from sfumato.errors import UnsupportedModel
from sfumato.models.home import refuse_pickle, resolve, short_hash
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


def apply_loras(model: LoadedModel, loras: list[tuple[str, float]]) -> None:
    """Activate exactly these LoRAs at these weights (loading each file once); none -> LoRAs off."""
    active = [(resolve(name, "lora"), weight) for name, weight in loras if weight != 0]
    if not active:
        if model.loras:
            model.pipe.disable_lora()
        return
    names, weights = [], []
    for path, weight in active:
        refuse_pickle(path)
        adapter = f"lora_{short_hash(path)}"
        if adapter not in model.loras:
            try:
                model.pipe.load_lora_weights(str(path), adapter_name=adapter)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise UnsupportedModel(f"LoRA {path} does not fit this {model.family} model ({exc})") from None
            model.loras[adapter] = str(path)
        names.append(adapter)
        weights.append(weight)
    model.pipe.enable_lora()
    model.pipe.set_adapters(names, adapter_weights=weights)
