"""LoRA tools: merge several LoRAs into one, bake LoRAs into a checkpoint, extract a LoRA from a fine-tune.

A LoRA file is read as modules, each a pair (down: r×in[×k×k], up: out×r[×1×1]) with a scale alpha/r, from the
kohya/A1111 layout (`….lora_down.weight`, `….lora_up.weight`, `….alpha`) or the diffusers/peft layout
(`….lora_A.weight`, `….lora_B.weight`; scale 1). A module's weight change is ΔW = scale · up @ down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.home import open_weights, resolve

LAYOUTS = {"kohya": (".lora_down.weight", ".lora_up.weight"), "peft": (".lora_A.weight", ".lora_B.weight")}
TOOLS_METADATA_KEY = "sfumato.lora_tool"


@dataclass
class Pair:
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None  # None: alpha = rank (scale 1)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """ΔW in the module's weight shape (float32)."""
        down, up = self.down.float(), self.up.float()
        product = up.flatten(1) @ down.flatten(1)
        shape = (up.shape[0], *down.shape[1:])
        return (self.scale * product).reshape(shape)


def read_lora(path: Path) -> tuple[str, dict[str, Pair], dict[str, str]]:
    """(layout, modules, metadata) of a LoRA file; LyCORIS kinds other than LoRA/LoCon are refused."""
    with open_weights(path) as handle:
        keys, metadata = list(handle.keys()), dict(handle.metadata() or {})
        state = {k: handle.get_tensor(k) for k in keys}
    for marker in ("hada_w1_a", "lokr_w1", "dora_scale", "oft_blocks"):
        if any(marker in k for k in keys):
            raise UnsupportedModel(f"{path} is a LyCORIS {marker.split('_')[0].upper()} file: these tools handle "
                                   "LoRA/LoCon pairs only")
    for layout, (down_suffix, up_suffix) in LAYOUTS.items():
        modules = {k[:-len(down_suffix)] for k in keys if k.endswith(down_suffix)}
        if not modules:
            continue
        pairs = {}
        for module in sorted(modules):
            if module + up_suffix not in state:
                raise UnsupportedModel(f"{path}: {module} has a down but no up matrix")
            alpha = state.get(module + ".alpha")
            pairs[module] = Pair(state[module + down_suffix], state[module + up_suffix],
                                 float(alpha) if alpha is not None else None)
        return layout, pairs, metadata
    raise UnsupportedModel(f"{path} holds no LoRA pairs (kohya lora_down/lora_up or peft lora_A/lora_B)")


def write_lora(path: Path, layout: str, modules: dict[str, Pair], metadata: dict[str, str]) -> Path:
    down_suffix, up_suffix = LAYOUTS[layout]
    state: dict[str, torch.Tensor] = {}
    for module, pair in modules.items():
        state[module + down_suffix] = pair.down.contiguous()
        state[module + up_suffix] = pair.up.contiguous()
        if layout == "kohya":
            state[module + ".alpha"] = torch.tensor(float(pair.alpha if pair.alpha is not None else pair.rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", **metadata})
    tmp.replace(path)
    return path


def low_rank(delta: torch.Tensor, rank: int, like_conv: bool) -> Pair:
    """The best rank-`rank` factorisation of ΔW (truncated SVD), as a LoRA pair with scale 1."""
    matrix = delta.float().flatten(1)
    rank = max(1, min(rank, *matrix.shape))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if like_conv and delta.dim() == 4:
        return Pair(down.reshape(rank, *delta.shape[1:]), up.reshape(delta.shape[0], rank, 1, 1), float(rank))
    return Pair(down, up, float(rank))


# ----------------------------------------------------------------------------- merge LoRAs

def merge_loras(loras: list[tuple[str, float]], out: Path, rank: int | None = None) -> Path:
    """One LoRA equal to applying `loras` at their weights together.

    Without `rank` the pairs are stacked (rank = the sum of ranks): exact. With `rank` each module's summed ΔW is
    factorised again by SVD to that rank (smaller file, the best approximation at that rank)."""
    if len(loras) < 2:
        raise InvalidRequest("merging needs at least two LoRAs")
    read = [(read_lora(resolve(name, "lora")), float(weight)) for name, weight in loras]
    layouts = {layout for (layout, _, _), _ in read}
    if len(layouts) > 1:
        raise InvalidRequest("the LoRAs are in different layouts (kohya and diffusers); merge files of one layout")
    layout = layouts.pop()
    modules = sorted({m for (_, pairs, _), _ in read for m in pairs})
    merged: dict[str, Pair] = {}
    for module in modules:
        present = [(pairs[module], weight) for (_, pairs, _), weight in read if module in pairs]
        if rank is None:
            down = torch.cat([p.down.float() for p, _ in present])
            up = torch.cat([p.up.float() * (w * p.scale) for p, w in present], dim=1)
            merged[module] = Pair(down, up, float(down.shape[0]))
        else:
            delta = sum(w * p.delta() for p, w in present)
            merged[module] = low_rank(delta, rank, present[0][0].down.dim() == 4)
    dtype = read[0][0][1][modules[0]].down.dtype
    merged = {m: Pair(p.down.to(dtype), p.up.to(dtype), p.alpha) for m, p in merged.items()}
    recipe = {"merge": [[Path(name).name, weight] for name, weight in loras], "rank": rank}
    first_metadata = read[0][0][2]
    keep = {k: v for k, v in first_metadata.items() if k in ("sfumato.preset", "ss_base_model_version")}
    return write_lora(out, layout, merged, {**keep, TOOLS_METADATA_KEY: json.dumps(recipe)})


# ----------------------------------------------------------------------------- extract a LoRA

UNET_TARGETS = ("Transformer2DModel",)  # kohya's extraction targets (attention blocks)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")  # with a conv rank (LoCon)
TEXT_TARGETS = ("CLIPAttention", "CLIPMLP")


def _target_layers(model: torch.nn.Module, classes: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    found = {}
    for name, module in model.named_modules():
        if type(module).__name__ in classes:
            for child_name, child in module.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    found[f"{name}.{child_name}" if child_name else name] = child
    return found


def kohya_name(component: str, name: str) -> str:
    """The module path kohya/A1111 files use: text encoders are named from `text_model.` (transformers 5 models
    have no such wrapper; diffusers' loader expects it either way)."""
    if component.startswith("text_encoder") and not name.startswith("text_model."):
        return "text_model." + name
    return name


def extract_lora(tuned: Path, base: Path, out: Path, rank: int = 32, conv_rank: int = 0, text_encoder: bool = True,
                 min_diff: float = 1e-6, progress: Callable[[int, int], None] | None = None) -> Path:
    """A kohya-layout LoRA approximating `tuned − base` (truncated SVD per layer, rank / conv rank). Layers that
    did not change (max |ΔW| ≤ min_diff) are left out. Loads in sfumato, A1111 and diffusers' `load_lora_weights`."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    from sfumato.models.loader import load_model

    if rank < 1 or conv_rank < 0:
        raise InvalidRequest("rank must be >= 1 and conv rank >= 0")
    tuned_model = load_model(tuned, device="cpu", dtype="float32")
    base_model = load_model(base, device="cpu", dtype="float32")
    if tuned_model.family != base_model.family:
        raise UnsupportedModel(f"{tuned} is {tuned_model.family} but {base} is {base_model.family}")
    parts = [("unet", "lora_unet", UNET_TARGETS + (UNET_CONV_TARGETS if conv_rank else ()))]
    if text_encoder:
        sdxl = getattr(tuned_model.pipe, "text_encoder_2", None) is not None
        parts += [("text_encoder", "lora_te1" if sdxl else "lora_te", TEXT_TARGETS),
                  ("text_encoder_2", "lora_te2", TEXT_TARGETS)]
    state: dict[str, torch.Tensor] = {}
    jobs = []
    for component, prefix, classes in parts:
        tuned_part, base_part = getattr(tuned_model.pipe, component, None), getattr(base_model.pipe, component, None)
        if tuned_part is None or base_part is None:
            continue
        base_layers = _target_layers(base_part, classes)
        for name, layer in _target_layers(tuned_part, classes).items():
            jobs.append((component, prefix, name, layer, base_layers.get(name)))
    for done, (component, prefix, name, layer, base_layer) in enumerate(jobs):
        if base_layer is None or base_layer.weight.shape != layer.weight.shape:
            raise UnsupportedModel(f"{component}.{name} differs in shape between the models: not a fine-tune of it")
        delta = layer.weight.detach() - base_layer.weight.detach()
        if delta.abs().max() > min_diff:
            conv = isinstance(layer, torch.nn.Conv2d)
            if not (conv and layer.kernel_size != (1, 1) and not conv_rank):
                pair = low_rank(delta, conv_rank if conv and layer.kernel_size != (1, 1) else rank, conv)
                module = kohya_name(component, name)
                # one alpha (= rank) in every module, the scale folded into `up`: a layer narrower than the rank
                # gets a smaller rank, and diffusers' kohya loader mis-maps per-module alphas of the mid block
                up = pair.up * (pair.rank / rank)
                peft = {f"{module}.lora_A.weight": pair.down, f"{module}.lora_B.weight": up}
                for key, value in convert_state_dict_to_kohya(peft).items():
                    if key.endswith(".alpha"):
                        value = torch.tensor(float(rank))
                    state[f"{prefix}_{key}"] = value.contiguous()
        if progress is not None:
            progress(done + 1, len(jobs))
    if not state:
        raise InvalidRequest(f"{tuned} and {base} do not differ in any layer a LoRA can hold")
    recipe = {"extract": {"tuned": tuned.name, "base": base.name, "rank": rank, "conv_rank": conv_rank}}
    metadata = {"format": "pt", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
                "ss_network_module": "networks.lora", TOOLS_METADATA_KEY: json.dumps(recipe)}
    if conv_rank:
        metadata["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(rank)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------------- bake LoRAs into a checkpoint

def bake_loras(model_path: Path, loras: list[tuple[str, float]], out: Path, half: bool = False) -> Path:
    """`model_path` with `loras` fused into its weights, written in the model's own form (folder or single file)."""
    from sfumato.models.loader import components_of, load_model
    from sfumato.models.lora import adapter_kind, apply_loras
    from sfumato.models.singlefile import write_single_file

    if not loras:
        raise InvalidRequest("name at least one LoRA to bake in (--lora PATH[:WEIGHT])")
    to_file = out.suffix.lower() == ".safetensors"
    if not to_file and out.suffix:
        raise InvalidRequest(f"output {out} must end in .safetensors or be a folder (no suffix)")
    for name, _ in loras:
        if adapter_kind(resolve(name, "lora")) != "lora":
            raise UnsupportedModel(f"{name} is not a LoRA (only LoRA files can be baked in)")
    model = load_model(model_path, device="cpu", dtype="float32")
    apply_loras(model, loras)  # LyCORIS files are patched into the weights here; LoRAs become peft adapters
    if model.loras:
        model.pipe.fuse_lora(components=[c for c in ("unet", "text_encoder", "text_encoder_2")
                                         if getattr(model.pipe, c, None) is not None], lora_scale=1.0)
        model.pipe.unload_lora_weights()
    if to_file:
        write_single_file(components_of(model), model.info, out, half=half)
        return out
    if half:
        model.pipe.to(torch.float16)
    model.pipe.save_pretrained(str(out), safe_serialization=True)
    settings = model_path / "sfumato.json"
    if model_path.is_dir() and settings.exists():
        (out / "sfumato.json").write_text(settings.read_text())
    return out
