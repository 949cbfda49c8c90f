"""IP-Adapter (image prompt): reference images steer generation through extra cross-attention on image features.

The adapter weights (one safetensors file: `image_proj.*` + `ip_adapter.*`, as diffusers and the original release
ship them) and the CLIP vision encoder (a transformers `CLIPVisionModelWithProjection` folder) come from user paths;
nothing is fetched. diffusers does the work (`load_ip_adapter`, its attention processors, `ImageProjection` /
`IPAdapterPlusImageProjection`); this module loads them offline, computes the image embeddings of a batch, and takes
the adapter out again after the batch so the UNet is unchanged for the next request.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file

from sfumato.errors import InvalidRequest, ModelNotFound, UnsupportedModel
from sfumato.models import home


def ip_adapter_dir() -> Path:
    return home.home() / "models" / "ip-adapter"


def resolve_adapter(name: str) -> Path:
    """A path, or a file name (with or without .safetensors) in $SFUMATO_HOME/models/ip-adapter."""
    path = Path(name).expanduser()
    if not path.exists():
        for candidate in (ip_adapter_dir() / name, ip_adapter_dir() / f"{name}.safetensors"):
            if candidate.exists():
                path = candidate
                break
        else:
            raise ModelNotFound(f"IP-Adapter {name!r} not found (not a path, and not in {ip_adapter_dir()})")
    home.refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedModel(f"{path}: IP-Adapter weights must be a .safetensors file")
    return path


def resolve_encoder(adapter: Path, encoder: str | None) -> Path:
    """The CLIP vision encoder: the given folder, else `image_encoder/` next to the adapter or in the models home."""
    candidates = [Path(encoder).expanduser()] if encoder else [adapter.parent / "image_encoder",
                                                               ip_adapter_dir() / "image_encoder"]
    for folder in candidates:
        if (folder / "config.json").exists():
            return folder
    raise ModelNotFound(f"no CLIP vision encoder for IP-Adapter {adapter.name}: pass --ip-image-encoder FOLDER "
                        f"(a transformers CLIPVisionModelWithProjection), or put it in {candidates[-1]}")


def adapter_state(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The file's tensors split the way diffusers' loader takes a state dict: image_proj / ip_adapter."""
    try:
        flat = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for damaged files
        raise UnsupportedModel(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") from None
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, _, rest = key.partition(".")
        if group not in state:
            raise UnsupportedModel(f"{path}: not an IP-Adapter (unexpected tensor {key!r})")
        state[group][rest] = value
    if not state["image_proj"] or not state["ip_adapter"]:
        raise UnsupportedModel(f"{path}: not an IP-Adapter (needs image_proj.* and ip_adapter.* tensors)")
    return state


@dataclass
class IPAdapterWeights:
    """An adapter's tensors and its CLIP vision encoder, loaded once and kept by the engine across requests."""

    state: dict[str, dict[str, torch.Tensor]]
    vision: torch.nn.Module
    processor: object


def load_ip_adapter_weights(adapter: Path, encoder: Path, device, dtype: torch.dtype) -> IPAdapterWeights:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection.from_pretrained(str(encoder), local_files_only=True,
                                                           use_safetensors=True).to(device, dtype).eval()
    size = vision.config.image_size
    processor = CLIPImageProcessor.from_pretrained(str(encoder)) if (encoder / "preprocessor_config.json").exists() \
        else CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return IPAdapterWeights(adapter_state(adapter), vision, processor)


@contextlib.contextmanager
def ip_adapter_loaded(pipe, weights: IPAdapterWeights, scale: float, name: str = "IP-Adapter") -> Iterator[None]:
    """The pipeline with the adapter and its image encoder in place, inside the block only."""
    pipe.register_modules(image_encoder=weights.vision, feature_extractor=weights.processor)
    state = {group: dict(tensors) for group, tensors in weights.state.items()}  # diffusers may consume its input
    try:
        pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    except (KeyError, RuntimeError, ValueError) as exc:
        pipe.register_modules(image_encoder=None, feature_extractor=None)
        raise UnsupportedModel(f"{name}: does not fit this model ({str(exc).splitlines()[0][:200]})") from None
    pipe.set_ip_adapter_scale(scale)
    try:
        yield
    finally:
        pipe.unload_ip_adapter()
        pipe.register_modules(image_encoder=None, feature_extractor=None)


@torch.no_grad()
def image_embeds(pipe, images: list, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative, positive) image embeddings, one row per image of the batch (diffusers' own preparation)."""
    if not images:
        raise InvalidRequest("an IP-Adapter needs at least one reference image")
    embeds = pipe.prepare_ip_adapter_image_embeds([images], None, pipe.device, count, True)[0]
    negative, positive = embeds.chunk(2)
    return negative, positive
