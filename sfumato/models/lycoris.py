"""LyCORIS networks (LoHa, LoKr, full/diff, and LoRA/LoCon modules inside them) applied as weight patches.

Plain LoRA and LoCon files (`lora_down`/`lora_up`, DoRA's `dora_scale`) load through diffusers' kohya converter as
peft adapters (`models.lora`). diffusers has no SD/SDXL loader for LoHa and LoKr, so files holding any such module
take this path, which does what A1111's built-in networks do: each module's ΔW is rebuilt from its factors, scaled
by alpha/dim and the request's weight, and added to the layer's weight; the original weights are kept and put back
when the request's set of LyCORIS files changes. Key names: kohya's (`lora_unet_down_blocks_0_…`,
`lora_te_text_model_…`, `lora_te1_`/`lora_te2_` for SDXL) and the SGM block names of SDXL files
(`lora_unet_input_blocks_4_1_…`), mapped with diffusers' own table; for SD3/FLUX transformers the LyCORIS library's
`lycoris_<diffusers module path>` names, or the original (BFL/SAI) block names with fused projections
(`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_joint_blocks_0_x_block_attn_qkv`): their ΔW is rebuilt at the
fused shape and split over the diffusers layers it stands for, by the single-file rule table (`models.flowfile`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sfumato.errors import UnsupportedModel
from sfumato.models.home import open_weights

# module kind -> the parameter that marks it
MARKERS = (("loha", "hada_w1_a"), ("lokr", "lokr_w1"), ("lokr", "lokr_w1_a"), ("full", "diff"),
           ("lora", "lora_down.weight"))
# component -> the name prefixes of its modules: kohya's for UNets and text encoders (lora_te3 = SD3's T5), and for
# SD3/FLUX transformers the LyCORIS library's own (`lycoris_` + the diffusers module path, as SimpleTuner and
# LyCORIS' `create_lycoris` write them) or kohya-style names over diffusers paths
PREFIXES = (("unet", ("lora_unet",)), ("text_encoder", ("lora_te", "lora_te1")), ("text_encoder_2", ("lora_te2",)),
            ("text_encoder_3", ("lora_te3",)), ("transformer", ("lycoris", "lora_transformer", "lora_unet")))


def module_kinds(path: Path) -> set[str]:
    """The kinds of network module in a file (LoCon counts as "lora"); the header is read once per file version."""
    stat = Path(path).stat()
    return set(_module_kinds(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=256)
def _module_kinds(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    with open_weights(Path(path)) as handle:
        params = {key.split(".", 1)[1] for key in handle.keys() if "." in key}
    return frozenset(kind for kind, marker in MARKERS if marker in params)


def network_type(path: Path) -> str:
    """What a user would call the file: LoRA, LoCon (LoRA with convolutions), LoHa, LoKr, full, DoRA."""
    kinds = module_kinds(path)
    for kind, label in (("loha", "LoHa"), ("lokr", "LoKr"), ("full", "full")):
        if kind in kinds:
            return label
    with open_weights(path) as handle:
        keys = list(handle.keys())
        if any(k.endswith(".dora_scale") for k in keys):
            return "DoRA"
        conv = any(k.endswith("lora_down.weight") and len(handle.get_slice(k).get_shape()) == 4
                   and handle.get_slice(k).get_shape()[2] > 1 for k in keys)
    return "LoCon" if conv else "LoRA"


def is_lycoris(path: Path) -> bool:
    """True when the file needs the patch path (it holds a LoHa, LoKr or full module)."""
    return bool(module_kinds(path) - {"lora"})


def read_network(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """module name -> {parameter name: tensor} (e.g. `hada_w1_a`, `alpha`)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    with open_weights(path) as handle:
        for key in handle.keys():
            module, _, param = key.partition(".")
            modules.setdefault(module, {})[param] = handle.get_tensor(key)
    return modules


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Tucker (CP) rebuild used by LyCORIS for convolutions: t (r, r, k, k), wa (r, out), wb (r, in)."""
    return torch.einsum("i j k l, i p, j r -> p r k l", t, wa, wb)


def _product(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    if t is not None:
        return _cp(t, a, b)
    return a.flatten(1) @ b.flatten(1)


def module_delta(params: dict[str, torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ΔW scaled by alpha/dim, Δbias or None) of one module, shaped like the layer's weight."""
    p = {k: v.float() for k, v in params.items()}
    alpha = float(p["alpha"]) if "alpha" in p else None
    bias = p.get("diff_b")
    if "diff" in p:
        return p["diff"].reshape(shape), bias
    if "hada_w1_a" in p:
        delta = (_product(p["hada_w1_a"], p["hada_w1_b"], p.get("hada_t1"))
                 * _product(p["hada_w2_a"], p["hada_w2_b"], p.get("hada_t2")))
        dim = p["hada_w1_b"].shape[0]
    elif "lokr_w1" in p or "lokr_w1_a" in p:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _cp(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:
            w2 = p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)
            if len(shape) == 4:  # conv: the second factor carries the kernel
                w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
        if len(shape) == 4:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:]) if w2.dim() == 2 else w2
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2)
        dim = (p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p
               else None)
        if dim is None:
            alpha = None
    elif "lora_down.weight" in p:
        up, down = p["lora_up.weight"], p["lora_down.weight"]
        if "lora_mid.weight" in p:
            delta = torch.einsum("n m k l, i n, m j -> i j k l", p["lora_mid.weight"], up.flatten(1),
                                 down.flatten(1))
        else:
            delta = up.flatten(1) @ down.flatten(1)
        dim = down.shape[0]
    else:
        raise UnsupportedModel(f"unknown network module with parameters {sorted(params)}")
    delta = delta.reshape(shape)
    if alpha is not None and dim:
        delta = delta * (alpha / dim)
    return delta, bias


def weight_decompose(delta: torch.Tensor, weight: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA on a LyCORIS module (A1111's `apply_weight_decompose`): the merged weight's per-column norm is replaced
    by the learned magnitude (per row when the magnitude has one entry per output channel)."""
    merged = weight + delta
    scale = dora_scale.float()
    if scale.numel() == merged.shape[0] and merged.shape[0] != merged.shape[1]:
        norm = merged.flatten(1).norm(dim=1).reshape(-1, *[1] * (merged.dim() - 1))
        return merged * (scale.reshape(norm.shape) / norm) - weight
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
    return merged * (scale.reshape(norm.shape) if scale.numel() == norm.numel() else scale) / norm - weight


def _layers(model) -> dict[str, torch.nn.Module]:
    """kohya module name -> Linear/Conv2d layer of the loaded model (peft wrappers looked through)."""
    found: dict[str, torch.nn.Module] = {}
    for component, prefixes in PREFIXES:
        part = getattr(model.pipe, component, None)
        if part is None:
            continue
        for name, module in part.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or ".lora_" in name:
                continue
            name = name.removesuffix(".base_layer")
            names = [name] + (["text_model." + name] if component.startswith("text_encoder")
                              and not name.startswith("text_model.") else [])
            for prefix in prefixes:
                for variant in names:
                    found[f"{prefix}_{variant.replace('.', '_')}"] = module
    return found


def _canonical(name: str) -> str:
    from diffusers.loaders.lora_conversion_utils import _convert_unet_lora_key

    return _convert_unet_lora_key(name + ".lora_down.weight")


def _match(modules: list[str], layers: dict[str, torch.nn.Module], unet) -> dict[str, torch.nn.Module]:
    """File module name -> layer. Kohya names match directly; SDXL files in SGM names (`input_blocks_4_1_…`,
    `in_layers_2`) go through diffusers' own block-index and key mapping, compared on the same canonical form."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    found = {m: layers[m] for m in modules if m in layers}
    sgm = [m for m in modules if m not in found and m.startswith("lora_unet_")
           and any(s in m for s in ("input_blocks", "middle_block", "output_blocks"))]
    if sgm and unet is not None:
        mapped = _maybe_map_sgm_blocks_to_diffusers({m: m for m in sgm}, unet.config)
        canonical: dict[str, list[torch.nn.Module]] = {}
        for name, layer in layers.items():
            if name.startswith("lora_unet_"):
                canonical.setdefault(_canonical(name), []).append(layer)
        for new, old in mapped.items():
            candidates = canonical.get(_canonical(new), [])
            if len({id(c) for c in candidates}) == 1:
                found[old] = candidates[0]
    return found


def _fused_targets(model) -> dict[str, tuple[list[torch.nn.Module], str]]:
    """Original-layout (BFL/SAI) module names of an SD3/FLUX transformer, kohya style (`lora_unet_` + the name with
    `_`), -> the diffusers Linear layers they stand for and how the weight maps onto them (copy, fuse, swap)."""
    if model.family not in ("sd3", "flux"):
        return {}
    from sfumato.models.flowfile import RULES

    linears = {name.removesuffix(".base_layer"): module for name, module in model.pipe.transformer.named_modules()
               if isinstance(module, torch.nn.Linear) and ".lora_" not in name}
    out = {}
    for original, sources, kind in RULES[model.family]([f"{n}.weight" for n in linears], False):
        if not original.endswith(".weight") or not all(s.removesuffix(".weight") in linears for s in sources):
            continue
        layers = [linears[s.removesuffix(".weight")] for s in sources]
        for prefix in ("lora_unet", "lora_transformer"):
            out[f"{prefix}_{original.removesuffix('.weight').replace('.', '_')}"] = (layers, kind)
    return out


def _fused_deltas(params: dict[str, torch.Tensor], layers: list[torch.nn.Module], kind: str, path: Path
                  ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """A fused module's ΔW (and bias) rebuilt at the original shape, split over its diffusers layers."""
    if "dora_scale" in params:
        raise UnsupportedModel(f"{path.name}: DoRA on a fused (original-layout) module is not supported")
    rows = [layer.weight.shape[0] for layer in layers]
    delta, bias = module_delta(params, (sum(rows), layers[0].weight.shape[1]))
    if kind == "swap":  # the original's (shift, scale) order is diffusers' (scale, shift)
        delta = torch.cat(delta.chunk(2)[::-1])
        bias = None if bias is None else torch.cat(bias.reshape(-1).chunk(2)[::-1])
    deltas = torch.split(delta, rows)
    biases = torch.split(bias.reshape(-1), rows) if bias is not None else [None] * len(rows)
    return list(zip(deltas, biases))


def _patch(model, layer: torch.nn.Module, delta: torch.Tensor, bias: torch.Tensor | None, weight: float,
           dora_scale: torch.Tensor | None = None) -> None:
    """Add `weight` × ΔW (and bias) to a layer, keeping its original weights to put back."""
    if id(layer) not in model.patches.originals:
        model.patches.originals[id(layer)] = (layer, layer.weight.detach().clone(),
                                              None if layer.bias is None else layer.bias.detach().clone())
    if dora_scale is not None:
        delta = weight_decompose(delta, model.patches.originals[id(layer)][1].float(), dora_scale)
    layer.weight.copy_((layer.weight.float() + weight * delta).to(layer.weight.dtype))
    if bias is not None and layer.bias is not None:
        layer.bias.copy_((layer.bias.float() + weight * bias.reshape(layer.bias.shape)).to(layer.bias.dtype))


@dataclass
class PatchState:
    """What is patched into a model's weights now, and the original weights to put back."""

    applied: tuple = ()
    originals: dict[int, tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)


def restore(model) -> None:
    state: PatchState | None = getattr(model, "patches", None)
    if state is None:
        return
    with torch.no_grad():
        for layer, weight, bias in state.originals.values():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
    state.originals.clear()
    state.applied = ()


def apply_networks(model, networks: list[tuple[Path, float]]) -> None:
    """Patch exactly these LyCORIS files at these weights into the model (nothing when the set is unchanged)."""
    key = tuple((str(path), path.stat().st_mtime_ns, weight) for path, weight in networks)
    if model.patches is None:
        model.patches = PatchState()
    if model.patches.applied == key:
        return
    restore(model)
    if not networks:
        return
    layers = _layers(model)
    with torch.no_grad():
        for path, weight in networks:
            modules = read_network(path)
            targets = _match(list(modules), layers, getattr(model.pipe, "unet", None))
            fused = _fused_targets(model) if len(targets) < len(modules) else {}
            missing = [m for m in modules if m not in targets and m not in fused]
            if missing:
                restore(model)
                raise UnsupportedModel(f"LoRA {path.name} does not fit this {model.family} model "
                                       f"({len(missing)} of {len(modules)} modules have no layer, e.g. {missing[0]})")
            for module, params in modules.items():
                if module not in targets:  # an original-layout module over one or more diffusers layers
                    parts = fused[module]
                    for layer, (delta, bias) in zip(parts[0], _fused_deltas(params, *parts, path)):
                        _patch(model, layer, delta, bias, weight)
                    continue
                layer = targets[module]
                delta, bias = module_delta(params, layer.weight.shape)
                _patch(model, layer, delta, bias, weight, params.get("dora_scale"))
    model.patches.applied = key
