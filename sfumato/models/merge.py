"""Checkpoint merging as A1111's Checkpoint Merger does it, plus block-weighted (MBW) merges.

    weighted sum      A·(1−α) + B·α
    add difference    A + (B − C)·α

α is one number, or one per UNet block (IN00…, M00, OUT00…: 25 blocks for SD 1.x/2.x, 19 for SDXL) with `alpha`
for everything outside the UNet blocks (text encoders, VAE) — the merge-block-weighted convention: `time_embed` goes
with IN00 and the UNet's `out` with the last OUT block. Tensors are read one at a time from memory-mapped files and
the result is the only model held in memory. Inputs are single `.safetensors` files (LDM layout) or diffusers
folders, all of one kind; the result has that kind too, with the recipe in its metadata (`sfumato.merge`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sfumato.models.merge_presets import MODES, PRESETS
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.detect import describe
from sfumato.models.home import refuse_pickle, short_hash

MERGE_METADATA_KEY = "sfumato.merge"
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")
VAE_PREFIX = "first_stage_model."
UNET_PREFIX = "model.diffusion_model."

@dataclass
class MergeRecipe:
    """What `sfumato merge` does; stored in the output's metadata."""

    mode: str = "weighted-sum"
    alpha: float = 0.5  # α for every tensor outside the UNet blocks (and inside them without block weights)
    block_weights: list[float] | None = None  # one α per UNet block (IN…, M00, OUT…)
    block_preset: str | None = None
    text_encoder: str = "merge"  # merge | A | B: where the text encoders come from
    vae: str = "merge"  # merge | A | B | a VAE file baked in
    half: bool = False
    models: dict[str, str] = field(default_factory=dict)  # A/B/C -> file name
    hashes: dict[str, str] = field(default_factory=dict)  # A/B/C -> short hash

    def validate(self, needs_c: bool) -> None:
        if self.mode not in MODES:
            raise InvalidRequest(f"merge mode must be one of {', '.join(MODES)}")
        if needs_c != (self.mode == "add-difference"):
            raise InvalidRequest("add-difference needs a third model C (A + (B - C) * alpha); weighted-sum takes two")
        for name in ("text_encoder",):
            if getattr(self, name) not in ("merge", "A", "B"):
                raise InvalidRequest(f"{name.replace('_', '-')} must be merge, A or B")


def block_count(layers_per_block: int, down_blocks: int) -> tuple[int, int]:
    """(input blocks, output blocks) of a UNet in the LDM numbering."""
    return down_blocks * (layers_per_block + 1), down_blocks * (layers_per_block + 1)


def preset_weights(name: str, blocks: int) -> list[float]:
    if name not in PRESETS:
        raise InvalidRequest(f"unknown block-weight preset {name!r}; choose from {', '.join(PRESETS)}")
    return [PRESETS[name](i / (blocks - 1)) for i in range(blocks)]


# ----------------------------------------------------------------------------- sources (tensors one at a time)

class Source:
    """A model's tensors by name, read lazily: an LDM single file, or a diffusers folder (`component/key`)."""

    def __init__(self, path: Path):
        refuse_pickle(path)
        self.path, self.info = path, describe(path)
        self.folder = path.is_dir()
        self._handles: dict[str, object] = {}
        self._where: dict[str, tuple[str, str]] = {}  # key -> (file, key in file)
        for file in self._files():
            handle = safe_open(str(file), framework="pt")
            self._handles[str(file)] = handle
            prefix = file.parent.name + "/" if self.folder else ""
            for key in handle.keys():
                self._where[prefix + key] = (str(file), key)

    def _files(self) -> list[Path]:
        if not self.folder:
            return [self.path]
        files = sorted(self.path.glob("*/*.safetensors"))
        if not files:
            raise UnsupportedModel(f"{self.path} has no .safetensors weights")
        return files

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> torch.Tensor:
        file, inner = self._where[key]
        return self._handles[file].get_tensor(inner)

    def metadata(self) -> dict[str, str]:
        return dict(self._handles[str(self.path)].metadata() or {}) if not self.folder else {}

    def unet_layout(self) -> tuple[int, int]:
        """(layers_per_block, number of down blocks) of the UNet."""
        config = self.info.configs.get("unet") or {}
        if not config and self.folder:
            config = json.loads((self.path / "unet" / "config.json").read_text())
        if not config:
            config = (self.info.family.skeleton or {}).get("unet", {})
        return int(config.get("layers_per_block", 2)), len(config.get("down_block_types", [0, 0, 0, 0]))


def part_of(key: str, folder: bool) -> str:
    """unet, text_encoder, vae or other."""
    if folder:
        component = key.split("/", 1)[0]
        return "text_encoder" if component.startswith("text_encoder") else component
    if key.startswith(UNET_PREFIX):
        return "unet"
    if key.startswith(TEXT_PREFIXES):
        return "text_encoder"
    if key.startswith(VAE_PREFIX):
        return "vae"
    return "other"


_LDM_BLOCK = re.compile(r"\.(input_blocks|middle_block|output_blocks)\.(\d+)\.")
_DIFFUSERS_BLOCK = re.compile(r"^unet/(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.")


def block_index(key: str, folder: bool, layers: int, blocks_in: int, blocks_out: int) -> int | None:
    """The key's UNet block in the weight list (IN00…, M00, OUT…), or None outside the UNet."""
    last = blocks_in + blocks_out  # the last OUT block
    if folder:
        if not key.startswith("unet/"):
            return None
        if key.startswith(("unet/conv_in.", "unet/time_embedding.", "unet/add_embedding.", "unet/class_embedding.")):
            return 0
        if key.startswith("unet/mid_block."):
            return blocks_in
        if key.startswith(("unet/conv_norm_out.", "unet/conv_out.")):
            return last
        match = _DIFFUSERS_BLOCK.match(key)
        if match is None:
            return None
        group, index, kind, inner = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        if group == "down_blocks":
            return (index + 1) * (layers + 1) if kind == "downsamplers" else 1 + index * (layers + 1) + inner
        position = index * (layers + 1) + (layers if kind == "upsamplers" else inner)
        return blocks_in + 1 + position
    if not key.startswith(UNET_PREFIX):
        return None
    if key.startswith((UNET_PREFIX + "time_embed.", UNET_PREFIX + "label_emb.")):
        return 0
    if key.startswith(UNET_PREFIX + "out."):
        return last
    match = _LDM_BLOCK.search(key)
    if match is None:
        return None
    group, index = match.group(1), int(match.group(2))
    return {"input_blocks": index, "middle_block": blocks_in, "output_blocks": blocks_in + 1 + index}[group]


# ----------------------------------------------------------------------------- the merge

def merge(a: Path, b: Path, out: Path, recipe: MergeRecipe, c: Path | None = None,
          progress: Callable[[int, int], None] | None = None) -> Path:
    """Merge A and B (and C for add-difference) into `out` (a `.safetensors` file or a folder, as the inputs)."""
    recipe.validate(c is not None)
    sources = {"A": Source(a), "B": Source(b)} | ({"C": Source(c)} if c is not None else {})
    kinds = {s.folder for s in sources.values()}
    if len(kinds) > 1:
        raise InvalidRequest("merge models of one kind: all single files or all diffusers folders "
                             "(convert one with `sfumato convert`)")
    families = {s.info.family.name for s in sources.values()}
    if len(families) > 1:
        raise UnsupportedModel(f"cannot merge models of different families ({', '.join(sorted(families))})")
    folder = kinds.pop()
    if folder == (out.suffix.lower() == ".safetensors"):
        raise InvalidRequest(f"output {out} must be {'a folder' if folder else 'a .safetensors file'} like the inputs")
    layers, downs = sources["A"].unet_layout()
    blocks_in, blocks_out = block_count(layers, downs)
    weights = _block_weights(recipe, blocks_in + 1 + blocks_out)
    vae_source = None
    if recipe.vae not in ("merge", "A", "B"):
        vae_source = _vae_tensors(Path(recipe.vae), sources["A"], folder)
    recipe.models = {k: s.path.name for k, s in sources.items()}
    recipe.hashes = {k: short_hash(s.path) for k, s in sources.items()}

    merged: dict[str, torch.Tensor] = {}
    keys = sources["A"].keys()
    for done, key in enumerate(keys):
        merged[key] = _merge_tensor(key, sources, recipe, weights, folder, layers, blocks_in, blocks_out, vae_source)
        if progress is not None:
            progress(done + 1, len(keys))
    if recipe.half:
        merged = {k: v.half() if v.is_floating_point() else v for k, v in merged.items()}
    return _write(merged, sources["A"], out, recipe)


def _block_weights(recipe: MergeRecipe, blocks: int) -> list[float] | None:
    if recipe.block_preset:
        recipe.block_weights = preset_weights(recipe.block_preset, blocks)
    if recipe.block_weights is None:
        return None
    if len(recipe.block_weights) != blocks:
        raise InvalidRequest(f"block weights need {blocks} values for this UNet (IN00..IN{blocks // 2 - 1:02d}, M00, "
                             f"OUT00..OUT{blocks // 2 - 1:02d}), got {len(recipe.block_weights)}")
    return list(recipe.block_weights)


def _merge_tensor(key, sources, recipe, weights, folder, layers, blocks_in, blocks_out, vae_source) -> torch.Tensor:
    a = sources["A"].get(key)
    part = part_of(key, folder)
    if part == "vae" and vae_source is not None:
        return vae_source.get(key, a)
    choice = recipe.text_encoder if part == "text_encoder" else recipe.vae if part == "vae" else "merge"
    if choice == "A" or not a.is_floating_point():
        return a
    if any(key not in s._where for s in sources.values()):
        if choice == "B":
            raise UnsupportedModel(f"model B has no tensor {key}")
        return a  # only A has it (e.g. an EMA copy or a position-ids buffer): A's
    b = sources["B"].get(key)
    if choice == "B":
        return b
    alpha = recipe.alpha
    index = block_index(key, folder, layers, blocks_in, blocks_out) if weights is not None else None
    if index is not None:
        alpha = weights[index]
    c = sources["C"].get(key) if "C" in sources else None
    return _combine(key, a, b, c, alpha, recipe.mode)


def _combine(key: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float,
             mode: str) -> torch.Tensor:
    """One tensor by the formula, in float32. An inpainting A (9 input channels) merges its first 4 channels with a
    4-channel B (and C), as A1111 does when building an inpainting model by add difference."""
    dtype = a.dtype
    a32, b32 = a.float(), b.float()
    c32 = c.float() if c is not None else None
    if a32.shape != b32.shape or (c32 is not None and c32.shape != b32.shape):
        if a32.dim() == 4 and a32.shape[1] == 9 and b32.shape[1] == 4 and a32.shape[0] == b32.shape[0]:
            out = a32.clone()
            out[:, :4] = _combine(key, a32[:, :4].contiguous(), b32, c32, alpha, mode)
            return out.to(dtype)
        raise UnsupportedModel(f"{key}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}); "
                               "the models are not the same architecture")
    if mode == "weighted-sum":
        out = a32 * (1 - alpha) + b32 * alpha
    else:
        out = a32 + (b32 - c32) * alpha
    return out.to(dtype)


class _VaeTensors:
    """A VAE file's tensors under the merged model's VAE keys (bake in a VAE, as A1111's merger does)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def get(self, key: str, like: torch.Tensor) -> torch.Tensor:
        if key not in self.state:
            raise UnsupportedModel(f"the VAE to bake in has no tensor for {key}")
        value = self.state[key]
        if value.shape != like.shape:
            raise UnsupportedModel(f"the VAE to bake in does not fit: {key} {tuple(value.shape)} vs {tuple(like.shape)}")
        return value.to(like.dtype)


def _vae_tensors(path: Path, a: Source, folder: bool) -> _VaeTensors:
    from sfumato.models.singlefile import vae_to_ldm
    from sfumato.models.vae import load_vae, resolve_vae

    path = resolve_vae(str(path))
    if folder:
        own = json.loads((a.path / "vae" / "config.json").read_text())
    else:
        own = a.info.configs.get("vae") or (a.info.family.skeleton or {})["vae"]
    vae = load_vae(path, own, torch.float32, torch.device("cpu"))
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    if folder:
        return _VaeTensors({"vae/" + k: v for k, v in state.items()})
    return _VaeTensors(vae_to_ldm(state, dict(vae.config)))  # keys carry first_stage_model.


def _write(merged: dict[str, torch.Tensor], a: Source, out: Path, recipe: MergeRecipe) -> Path:
    record = json.dumps(asdict(recipe))
    if not a.folder:
        metadata = {**a.metadata(), MERGE_METADATA_KEY: record}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp), metadata=metadata)
        tmp.replace(out)
        return out
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(a.path, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.ckpt", "*.pt", "*.pth"))
    for file, tensors in _by_file(merged, a):
        save_file(tensors, str(tmp / file), metadata={"format": "pt", MERGE_METADATA_KEY: record})
    (tmp / "merge.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def _by_file(merged: dict[str, torch.Tensor], a: Source) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """The merged tensors grouped by the file (relative to the folder) that held them in A: names, variants and
    shards stay as they were, so A's index files still describe the result."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in merged.items():
        file, inner = a._where[key]
        files.setdefault(Path(file).relative_to(a.path).as_posix(), {})[inner] = value.contiguous()
    yield from files.items()
