"""Training configuration: one dataclass, filled from CLI flags or a data-only TOML file."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfumato.errors import InvalidRequest

METHODS = ("scratch", "full", "lora", "dreambooth", "oft", "textual-inversion", "controlnet", "lcm")


@dataclass
class TrainConfig:
    method: str
    data: str
    output: str
    model: str | None = None  # the base model (every method but scratch)
    steps: int = 1000
    batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # any name of diffusers.optimization.get_scheduler
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    resolution: int = 512  # the maximum bucket side
    buckets: bool = True
    bucket_min: int | None = None  # default: resolution // 2
    bucket_step: int = 64
    bucket_sizes: list[str] = field(default_factory=list)  # explicit "WxH" buckets, the first the base one
    max_aspect_error: float = 0.5
    flip: bool = False
    cache: bool = True
    text_cache_dtype: str = "float32"  # float16 halves the memory of a large caption set
    cache_dir: str | None = None  # default: $SFUMATO_HOME/cache/training
    caption_dropout: float = 0.1  # empty caption with this probability (classifier-free guidance)
    shuffle_tags: bool = False
    keep_tags: int = 1
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    prediction_type: str | None = None  # epsilon / v_prediction; default: the model's scheduler
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # no / bf16 / fp16
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = False
    validate_every: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int = 20
    validation_seed: int = 1
    validation_retrieval: int = 0  # generate N training captions at each validation, retrieve among their images
    validation_extractor: str = "open-nsfw"  # features for that retrieval (any `eval` extractor, e.g. classifier:PATH)
    log_every: int = 10
    # scratch
    unet_config: str | None = None  # a diffusers UNet2DConditionModel config.json (a models.textdit one for --arch dit)
    arch: str = "unet"  # unet, or dit: a text-conditioned DiT (PixArt-α blocks) in the UNet's place
    vae: str | None = None  # an AutoencoderKL folder (e.g. from `sfumato train vae`)
    text_encoder: str | None = None  # "minilm" or a local transformers model folder
    text_chunk_length: int = 75
    # lora / oft
    rank: int = 4
    alpha: float | None = None
    train_text_encoder: bool = False
    # dreambooth
    instance_prompt: str | None = None
    class_prompt: str | None = None
    class_data: str | None = None
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    use_lora: bool = False
    # textual inversion
    token: str | None = None
    initializer_token: str | None = None
    num_vectors: int = 1
    # controlnet
    preprocessor: str = "canny"  # control maps computed from each training image (cached in memory)
    threshold_a: float = -1.0  # the preprocessor's settings (-1: its default)
    threshold_b: float = -1.0
    controlnet: str | None = None  # start from this ControlNet folder instead of a copy of the UNet encoder
    control_augment: float = 0.0  # probability of a random warp (scale, shift, rotation) of image and map together
    # lcm (latent consistency distillation)
    lcm_form: str = "lora"  # lora (an LCM-LoRA of the base model, uses rank/alpha) or full (every UNet weight)
    lcm_guidance: float = 7.5  # the teacher's CFG scale, distilled into the student
    lcm_ddim_steps: int = 50  # the skipping-step DDIM schedule of the solver (k = 1000 / this)
    lcm_target_decay: float = 0.95  # EMA decay of the target network (full form)

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise InvalidRequest(f"unknown training method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method != "scratch" and not self.model:
            raise InvalidRequest(f"`train {self.method}` needs --model (the model to start from)")
        if self.method == "scratch" and not (self.unet_config and self.vae and self.text_encoder):
            raise InvalidRequest("`train scratch` needs --unet-config, --vae and --text-encoder")
        if self.arch not in ("unet", "dit") or (self.arch == "dit" and self.method != "scratch"):
            raise InvalidRequest("arch must be unet or dit (dit: `train scratch` only)")
        if self.method == "dreambooth" and not (self.instance_prompt and self.class_prompt):
            raise InvalidRequest("`train dreambooth` needs --instance-prompt and --class-prompt")
        if self.method == "textual-inversion" and not (self.token and self.initializer_token):
            raise InvalidRequest("`train textual-inversion` needs --token and --initializer-token")
        for name in ("steps", "batch_size", "gradient_accumulation", "resolution", "rank", "num_vectors"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise InvalidRequest("caption-dropout must be in [0, 1)")
        if self.text_cache_dtype not in ("float32", "float16"):
            raise InvalidRequest(f"text-cache-dtype must be float32 or float16, got {self.text_cache_dtype!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InvalidRequest("mixed-precision must be no, bf16 or fp16")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise InvalidRequest("prediction-type must be epsilon or v_prediction")
        if self.validation_retrieval < 0:
            raise InvalidRequest("validation-retrieval must be 0 (off) or a number of examples")
        if self.lcm_form not in ("lora", "full"):
            raise InvalidRequest("lcm-form must be lora or full")
        if not 1 <= self.lcm_ddim_steps <= 1000 or not 0.0 <= self.lcm_target_decay < 1.0 or self.lcm_guidance < 1:
            raise InvalidRequest("lcm-ddim-steps must be in 1..1000, lcm-target-decay in [0, 1), lcm-guidance >= 1")
        if self.resolution % 8:
            raise InvalidRequest("resolution must be a multiple of 8")
        return self


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a data-only TOML file of TrainConfig fields (dashes or underscores); unknown keys are errors."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequest(f"cannot read config {path}: {exc}") from None
    values = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise InvalidRequest(f"{path}: unknown training settings {', '.join(unknown)}")
    for key, value in values.items():
        check_type(key, value)
    return values


def check_type(name: str, value: Any) -> None:
    """Refuse a setting whose value has the wrong type (`steps = "many"`), naming the expected one."""
    hint = _HINTS[name]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind in (str, bool) and isinstance(value, kind):
            return
        if typing.get_origin(kind) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed if k is not type(None))
    raise InvalidRequest(f"training setting {name.replace('_', '-')} must be {expected}, got {value!r}"[:300])
