"""What every training method shares: the training setup (the pipe, the trained module, its steps, parking the
frozen parts, validation, saving), loading the base model, and adding and saving a LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from sfumato.errors import UnsupportedModel
from sfumato.models.folder import save_model_folder
from sfumato.prompts.encode import PromptEncoder
from sfumato.training.config import TrainConfig
from sfumato.training.data import Dataset, scan_folder

ATTENTION_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def encode_captions(encoder: PromptEncoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """First-chunk embeddings [B, T, D] (encoders concatenated) and the last encoder's pooled vector."""
    hidden, pooled = [], None
    for slot in encoder.slots:
        h, p = slot.forward_ids(slot.first_chunk_ids(captions))
        hidden.append(h)
        pooled = p
    return torch.cat(hidden, dim=-1), pooled


def _park(module: torch.nn.Module, path: Path) -> None:
    tensors = {f"p.{k}": v for k, v in module.named_parameters()} | {f"b.{k}": v for k, v in module.named_buffers()}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    module.to("meta")


def _unpark(module: torch.nn.Module, path: Path, device: torch.device) -> None:
    tensors = load_file(str(path))
    module.to_empty(device=device)
    with torch.no_grad():
        for key, value in tensors.items():
            kind, name = key.split(".", 1)
            target = module.get_parameter(name) if kind == "p" else module.get_buffer(name)
            target.copy_(value)


class Method:
    """What one training method adds to the shared loop. Each hook has the plain default, which a method's class
    overrides: the training folder's images and captions (`dataset`), nothing after an optimizer step
    (`after_step`), the whole model saved as a diffusers folder (`save`), the noise-prediction loss (`loss` None),
    no control maps (`control_maps`/`control_batch` None) and validation images with the model's own settings."""

    validation_preset: str | None = None  # sampling preset of the validation images (lcm)
    loss: Callable[..., torch.Tensor] | None = None  # (latents, embeds, pooled, uncond, uncond_pooled, w, h)
    control_maps: Callable[[Any, list[int], list[bool]], torch.Tensor] | None = None  # (features, images, flips)
    control_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None  # (features, images, flips, rng)

    def dataset(self, setup: TrainSetup, config: TrainConfig, say: Callable[[str], None]) -> tuple[Dataset, list]:
        data = scan_folder(Path(config.data))
        return data, [1.0] * len(data.examples)

    def after_step(self, setup: TrainSetup) -> None:
        return None

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        return save_full(setup, config, run_dir)


class Lora(Method):
    """peft LoRA on the UNet attention (and the text encoders): saved for diffusers and A1111 (`save_lora`)."""

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        return save_lora(setup, run_dir)


@dataclass
class TrainSetup:
    pipe: Any
    info: Any  # ModelInfo of the base model (or of the scratch model folder)
    device: torch.device
    model: torch.nn.Module  # the module being trained (wrapped by accelerate)
    trainable: dict[str, torch.nn.Parameter]
    live_text: bool = False
    chunk_length: int = 75
    extra: dict[str, Any] = field(default_factory=dict)
    method: Method = field(default_factory=lambda: Method())  # what the training method adds (see `Method`)
    _parked: list[tuple[torch.nn.Module, Path]] = field(default_factory=list)

    def __post_init__(self):
        self.encoder = PromptEncoder(self.pipe, self.info.family.name, self.chunk_length)
        self.noise_scheduler = _ddpm(self.pipe.scheduler.config)
        self.vae_config = dict(self.pipe.vae.config)
        self.vae_scale = 2 ** (len(self.vae_config["block_out_channels"]) - 1)
        unet = self.pipe.unet.config
        self.class_embed = unet.get("class_embed_type") is not None
        self.time_ids = unet.get("addition_embed_type") == "text_time"
        if unet.in_channels == 9:
            raise UnsupportedModel("training inpainting models is not supported")

    # ---------------------------------------------------------------- steps

    def predict(self, noisy, timesteps, embeds, pooled, width: int, height: int,
                control: torch.Tensor | None = None, unet=None) -> torch.Tensor:
        """The UNet's prediction (of `unet` when given: a teacher or target network with the same inputs)."""
        if unet is None:
            unet = self.model if self.model is self.pipe.unet or _wraps(self.model, self.pipe.unet) else self.pipe.unet
        kwargs: dict[str, Any] = {}
        if self.class_embed:
            kwargs["class_labels"] = pooled
        if self.time_ids:
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=embeds.device)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids.repeat(embeds.shape[0], 1)}
        if control is not None:  # the trained ControlNet's residuals go into the frozen UNet
            down, mid = self.model(noisy, timesteps, encoder_hidden_states=embeds, controlnet_cond=control,
                                   return_dict=False, **kwargs)
            kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"] = down, mid
        return unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]

    # ------------------------------------------------------- the method's hooks

    @property
    def control_maps(self):
        return self.method.control_maps

    @property
    def control_batch(self):
        return self.method.control_batch

    @property
    def loss_fn(self):
        return self.method.loss

    @property
    def validation_preset(self) -> str | None:
        return self.method.validation_preset

    def after_optimizer_step(self) -> None:
        self.method.after_step(self)

    def enable_gradient_checkpointing(self) -> None:
        target = self.pipe.unet if not self.live_text or self.model is self.pipe.unet else self.pipe.text_encoder
        target.gradient_checkpointing_enable() if hasattr(target, "gradient_checkpointing_enable") else \
            target.enable_gradient_checkpointing()

    def dataset(self, config: TrainConfig, say: Callable[[str], None]) -> tuple[Dataset, list[float]]:
        return self.method.dataset(self, config, say)

    # ----------------------------------------------------- memory management

    def park_frozen(self, folder: Path, keep_text: bool) -> None:
        """Move the VAE (and the text encoders unless they run live) out of memory while the UNet trains."""
        folder.mkdir(parents=True, exist_ok=True)
        parts = [("vae", self.pipe.vae)]
        if not keep_text:
            parts += [(n, getattr(self.pipe, n, None)) for n in ("text_encoder", "text_encoder_2")]
        for name, module in parts:
            if module is not None and module is not self.model and not any(m is module for m, _ in self._parked):
                path = folder / f"{name}.safetensors"
                _park(module, path)
                self._parked.append((module, path))

    def unpark(self) -> None:
        for module, path in self._parked:
            _unpark(module, path, self.device)
        self._parked.clear()

    # ------------------------------------------------------------ validation

    def validate(self, config: TrainConfig, parked: Path, probe=None) -> tuple[list, dict | None]:
        """The validation grid's images, and the retrieval scores of `probe` (a `RetrievalProbe`) when given."""
        from sfumato.engine import Engine
        from sfumato.models.loader import LoadedModel
        from sfumato.requests import GenerationRequest

        self.unpark()
        self.pipe.unet.eval()
        try:
            engine = Engine.with_model(LoadedModel(self.info, self.pipe, self.device, torch.float32))
            images = []
            for prompt in config.validation_prompts:
                request = GenerationRequest(prompt=prompt, seed=config.validation_seed, steps=config.validation_steps,
                                            preset=self.validation_preset)
                images.extend(r.image for r in engine.generate(request).images)
            scores = probe.score(engine, config.validation_steps) if probe is not None else None
            return images, scores
        finally:
            self.park_frozen(parked, keep_text=self.live_text)

    def save_final(self, config: TrainConfig, run_dir: Path) -> Path:
        self.unpark()
        return self.method.save(self, config, run_dir)


def _wraps(wrapper: torch.nn.Module, module: torch.nn.Module) -> bool:
    return getattr(wrapper, "module", None) is module


def _ddpm(scheduler_config: dict[str, Any]):
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")
    return DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if k in keys})


def save_full(setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
    return save_model_folder(setup.pipe, run_dir / "model", setup.info.settings or None)



def load_base(config: TrainConfig, device: torch.device):
    from sfumato.engine import Engine

    engine = Engine(config.model, device=str(device), dtype="float32")
    return engine, engine.load()


def unet_setup(config: TrainConfig, device: torch.device, loaded) -> TrainSetup:
    pipe = loaded.pipe
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    pipe.unet.requires_grad_(True)
    chunk = int(loaded.info.settings.get("text_chunk_length", 75))
    return TrainSetup(pipe, loaded.info, device, pipe.unet, dict(pipe.unet.named_parameters()), chunk_length=chunk)


def add_lora(setup: TrainSetup, config: TrainConfig) -> None:
    from peft import LoraConfig

    pipe = setup.pipe
    pipe.unet.requires_grad_(False)
    alpha = config.alpha if config.alpha is not None else config.rank
    pipe.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=ATTENTION_TARGETS))
    if config.train_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                encoder.add_adapter(LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                               target_modules=TEXT_TARGETS))
        setup.live_text = True
    setup.trainable = {f"unet.{n}": p for n, p in pipe.unet.named_parameters() if p.requires_grad}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if config.train_text_encoder and encoder is not None:
            setup.trainable.update({f"{name}.{n}": p for n, p in encoder.named_parameters() if p.requires_grad})


def save_lora(setup: TrainSetup, run_dir: Path) -> Path:
    """`pytorch_lora_weights.safetensors` (diffusers `load_lora_weights`) and `lora-kohya.safetensors` (A1111)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    pipe = setup.pipe
    layers: dict[str, Any] = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    kohya: dict[str, torch.Tensor] = {}
    kohya_prefix = {"unet": "lora_unet", "text_encoder": "lora_te1" if hasattr(pipe, "text_encoder_2") else "lora_te",
                    "text_encoder_2": "lora_te2"}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None and getattr(encoder, "peft_config", None):
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    for key, state in layers.items():
        part = key.removesuffix("_lora_layers")
        peft_state = get_peft_model_state_dict(getattr(pipe, part))
        for k, v in convert_state_dict_to_kohya(peft_state).items():
            kohya[_kohya_key(kohya_prefix[part], k)] = v
    out = run_dir / "lora"
    out.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(out), safe_serialization=True, **layers)
    save_file({k: v.detach().cpu().contiguous() for k, v in kohya.items()}, str(out / "lora-kohya.safetensors"),
              metadata={"ss_network_dim": str(setup.extra.get("rank", "")), "ss_network_module": "networks.lora"})
    return out / "pytorch_lora_weights.safetensors"


def _kohya_key(prefix: str, key: str) -> str:
    """diffusers' kohya conversion yields `down_blocks_0_...lora_down.weight` without the module prefix."""
    return key if key.startswith(("lora_unet", "lora_te")) else f"{prefix}_{key}"
