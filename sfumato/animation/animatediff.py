"""AnimateDiff: a motion module (diffusers `MotionAdapter`) animates the loaded SD 1.5 or SDXL UNet.

The motion UNet is a diffusers `UNetMotionModel` whose spatial layers *are* the loaded UNet's modules (shared, not
copied: no second copy of the weights, and the request's LoRAs apply to it) and whose temporal layers are the
adapter's. All frames are denoised together in our own loop (`pipelines.steps.denoise`, any sampler); clips longer
than the module's context run in overlapping windows whose predictions are averaged (AnimateDiff-Evolved's uniform
context). Motion LoRAs are merged into a fresh copy of the adapter's temporal weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sfumato.animation.request import AnimationRequest
from sfumato.errors import InvalidRequest, ModelNotFound, UnsupportedModel
from sfumato.models import home
from sfumato.requests import GeneratedImage, GenerationRequest

if TYPE_CHECKING:
    from sfumato.animation.progress import FrameProgress
    from sfumato.engine import Engine

ORIGINAL_KEY = "temporal_transformer"  # the AnimateDiff repository's checkpoints (diffusers converts them)
_MOTION_CACHE = "_sfumato_motion_unet"  # on the 2D UNet: (key, motion UNet) of the last adapter used


def motion_dir() -> Path:
    """AnimateDiff motion modules: diffusers `MotionAdapter` folders or single `.safetensors` files."""
    return home.home() / "models" / "motion"


def resolve_motion(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.exists():
        for candidate in (motion_dir() / name, motion_dir() / f"{name}.safetensors"):
            if candidate.exists():
                path = candidate
                break
        else:
            raise ModelNotFound(f"motion module {name!r} not found (not a path, and not in {motion_dir()})")
    home.refuse_pickle(path)
    return path


def load_motion_adapter(path: Path):
    """A `MotionAdapter` from a diffusers folder, or from one `.safetensors` file in diffusers' or the original
    AnimateDiff layout (its configuration read off the weights; no download)."""
    from diffusers import MotionAdapter

    if path.is_dir():
        try:
            return MotionAdapter.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UnsupportedModel(f"{path} is not a diffusers MotionAdapter folder ({exc})") from None
    with home.open_weights(path) as handle:
        weights = {key: handle.get_tensor(key) for key in handle.keys()}
    if any(ORIGINAL_KEY in key for key in weights):
        from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

        pe = next((v for k, v in weights.items() if k.endswith("pos_encoder.pe")), None)
        weights = convert_animatediff_checkpoint_to_diffusers(weights)
        config = _config_from_weights(weights, pe.shape[1] if pe is not None else 32)
    else:
        config = _config_from_weights(weights, 32)
    adapter = MotionAdapter(**config)
    missing, unexpected = adapter.load_state_dict(weights, strict=False)
    missing = [k for k in missing if "pos_embed" not in k]
    if missing or unexpected:
        raise UnsupportedModel(f"{path} is not an AnimateDiff motion module ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected weights, e.g. {(missing + unexpected)[0]})")
    return adapter


def _config_from_weights(weights: dict[str, torch.Tensor], max_seq_length: int) -> dict:
    """MotionAdapter's configuration from its diffusers-layout weights (block widths, layers, mid block)."""
    channels, layers, transformer_layers = [], [], 1
    for block in range(8):
        prefix = f"down_blocks.{block}.motion_modules."
        modules = {int(k[len(prefix):].split(".")[0]) for k in weights if k.startswith(prefix)}
        if not modules:
            break
        channels.append(weights[f"{prefix}0.proj_in.weight"].shape[0])
        layers.append(len(modules))
        blocks = {int(m.group(1)) for k in weights if (m := re.match(re.escape(prefix) + r"0\.transformer_blocks\.(\d+)", k))}
        transformer_layers = len(blocks) or 1
    if not channels:
        raise UnsupportedModel("no motion modules in this file (expected down_blocks.N.motion_modules weights)")
    return {"block_out_channels": tuple(channels), "motion_layers_per_block": layers[0],
            "motion_transformer_layers_per_block": transformer_layers,
            "use_motion_mid_block": any(k.startswith("mid_block.motion_modules.") for k in weights),
            "motion_max_seq_length": max_seq_length, "motion_num_attention_heads": 8}


def merge_motion_loras(adapter, loras: list[tuple[Path, float]]) -> None:
    """Add weight x up @ down (x alpha / rank when stored) of each motion LoRA to the adapter's linear layers; keys
    in the original layout (`processor.to_q_lora.down.weight`) or diffusers' (`to_q.lora.down.weight`, PEFT's
    `lora_A`/`lora_B`), with or without a `unet.` prefix."""
    modules = dict(adapter.named_modules())
    for path, scale in loras:
        with home.open_weights(path) as handle:
            weights = {key: handle.get_tensor(key) for key in handle.keys()}
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in weights.items():
            name = _lora_target(key)
            if name is not None:
                part = "down" if re.search(r"(lora\.down|lora_A|lora_down)", key) else \
                    "up" if re.search(r"(lora\.up|lora_B|lora_up)", key) else "alpha"
                pairs.setdefault(name, {})[part] = value
        if not pairs:
            raise UnsupportedModel(f"{path} holds no motion LoRA weights")
        for name, parts in pairs.items():
            layer = modules.get(name)
            if layer is None or "down" not in parts or "up" not in parts:
                raise UnsupportedModel(f"motion LoRA {path.name} does not fit this motion module ({name})")
            down, up = parts["down"].float(), parts["up"].float()
            factor = scale * (float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0)
            with torch.no_grad():
                layer.weight += (factor * up @ down).to(layer.weight.dtype)


def _lora_target(key: str) -> str | None:
    """The adapter module a LoRA key modifies, in diffusers' layout (None for keys that are not LoRA weights)."""
    key = key.removeprefix("unet.").removeprefix("base_model.model.")
    match = re.match(r"(.+?)\.(?:processor\.)?(to_q|to_k|to_v|to_out)(?:_lora|\.lora)?"
                     r"(?:\.0)?\.?(?:lora\.)?(down|up|lora_A|lora_B|alpha|lora_down|lora_up)", key)
    if not match:
        return None
    target = match.group(2) + (".0" if match.group(2) == "to_out" else "")
    return (match.group(1).replace(".temporal_transformer", "").replace(".attention_blocks.0", ".attn1")
            .replace(".attention_blocks.1", ".attn2") + "." + target)


def motion_unet(unet, adapter):
    """A `UNetMotionModel` built around `unet`'s own spatial modules and `adapter`'s temporal ones (nothing copied)."""
    from accelerate import init_empty_weights
    from diffusers import UNetMotionModel

    if unet.config.in_channels != 4 or getattr(unet.config, "addition_embed_type", None) not in (None, "text_time"):
        raise UnsupportedModel("AnimateDiff motion modules animate SD 1.5 and SDXL-layout UNets (4 channels)")
    if len(unet.down_blocks) != len(adapter.down_blocks):
        raise UnsupportedModel(f"this motion module has {len(adapter.down_blocks)} levels, the model's UNet "
                               f"{len(unet.down_blocks)}: an SD 1.5 module needs an SD 1.5 model, an SDXL one SDXL")
    with init_empty_weights():
        motion = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    # SDXL's added-conditioning layers too (diffusers' own from_unet2d leaves them at their initial values)
    for name in ("conv_in", "time_proj", "time_embedding", "conv_norm_out", "conv_act", "conv_out", "add_time_proj",
                 "add_embedding"):
        if hasattr(unet, name):
            setattr(motion, name, getattr(unet, name))
    for blocks, own, temporal in ((motion.down_blocks, unet.down_blocks, adapter.down_blocks),
                                  (motion.up_blocks, unet.up_blocks, adapter.up_blocks)):
        for block, source, module in zip(blocks, own, temporal):
            for part in ("resnets", "attentions", "downsamplers", "upsamplers"):
                if getattr(source, part, None) is not None:
                    setattr(block, part, getattr(source, part))
            block.motion_modules = module.motion_modules
    motion.mid_block.resnets, motion.mid_block.attentions = unet.mid_block.resnets, unet.mid_block.attentions
    if getattr(adapter, "mid_block", None) is not None:
        motion.mid_block.motion_modules = adapter.mid_block.motion_modules
    left = [name for name, p in motion.named_parameters() if p.is_meta]
    if left:
        raise UnsupportedModel(f"this motion module does not fit the model's UNet ({left[0]} has no weights)")
    return motion


class WindowedUNet:
    """Calls a motion UNet on [B, C, F, h, w] latents with the frame axis cut into windows of `length` frames that
    overlap by `overlap`; overlapping predictions are averaged. One window when the clip fits."""

    def __init__(self, unet, length: int, overlap: int, frame_context: torch.Tensor | None = None,
                 negative_rows: list[bool] = ()):
        self.unet, self.length, self.overlap = unet, length, overlap
        self.config, self.dtype = unet.config, unet.dtype
        self.frame_context, self.negative_rows = frame_context, list(negative_rows)  # prompt travel: [F, T, D]

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, return_dict: bool = False,
                 class_labels=None, added_cond_kwargs=None, timestep_cond=None, **_ignored):
        frames = sample.shape[2]
        total = torch.zeros_like(sample)
        counts = torch.zeros(frames, dtype=sample.dtype, device=sample.device)
        for start in windows(frames, self.length, self.overlap):
            chunk = sample[:, :, start:start + self.length]
            context = encoder_hidden_states.repeat_interleave(chunk.shape[2], dim=0)
            if self.frame_context is not None:  # each frame its own (travelled) prompt; negatives stay shared
                n = chunk.shape[2]
                own = self.frame_context[start:start + n].to(context.device, context.dtype)
                for row, negative in enumerate(self.negative_rows):
                    if not negative:
                        context[row * n:(row + 1) * n] = own
            prediction = self.unet(chunk, timestep, encoder_hidden_states=context, added_cond_kwargs=added_cond_kwargs,
                                   timestep_cond=timestep_cond, return_dict=False)[0]
            total[:, :, start:start + self.length] += prediction
            counts[start:start + self.length] += 1
        return (total / counts.view(1, 1, -1, 1, 1),)


def windows(frames: int, length: int, overlap: int) -> list[int]:
    """Start frames of the context windows covering `frames` frames (the last window ends on the last frame)."""
    if frames <= length:
        return [0]
    stride = length - overlap
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    return starts


def _cached_motion_unet(model, request: AnimationRequest):
    adapter_path = resolve_motion(request.motion_adapter)
    loras = [(home.resolve(name, "lora"), weight) for name, weight in request.motion_loras]
    unet = model.pipe.unet
    key = (str(adapter_path), tuple((str(p), w) for p, w in loras))
    cached = unet.__dict__.get(_MOTION_CACHE)
    if cached is None or cached[0] != key:
        unet.__dict__.pop(_MOTION_CACHE, None)
        adapter = load_motion_adapter(adapter_path)
        merge_motion_loras(adapter, loras)
        adapter.to(model.device, model.dtype)  # (no float32-only modules in a motion adapter)
        unet.__dict__[_MOTION_CACHE] = (key, motion_unet(unet, adapter))
    return unet.__dict__[_MOTION_CACHE][1]


def motion_latents(engine: "Engine", request: AnimationRequest, base: GenerationRequest,
                   tracker: "FrameProgress | None" = None) -> tuple[torch.Tensor, GenerationRequest]:
    """Every frame of the clip at once: seeded noise [1, C, F, h, w] (diffusers' AnimateDiff draws the same), the
    request's sampler and CFG. Returns the denoised latents and the resolved generation settings."""
    from sfumato.pipelines.steps import denoise, set_timesteps
    from sfumato.pipelines.tasks import BatchPrompts, guidance_for, scheduler_for

    if base.init_image or base.controls or base.hires_scale > 1 or base.p2p_source or base.ip_adapter:
        raise InvalidRequest("motion mode generates from noise: no init image, control units, hires fix, "
                             "prompt-to-prompt or IP-Adapter")
    resolved = engine.resolve(base)
    model, encoder = engine.prepared(resolved)
    if model.info.family.denoiser != "unet" or model.info.dit_denoiser:
        raise InvalidRequest(f"AnimateDiff motion modules animate SD 1.5 and SDXL models, not {model.info.family.name}")
    if request.prompts:
        guidance, frame_context = _travelled_prompts(encoder, resolved, request)
    else:
        guidance, frame_context = guidance_for(encoder, resolved, BatchPrompts.of(resolved, 1)), None
    unet = WindowedUNet(_cached_motion_unet(model, request), request.context_length, request.context_overlap,
                        frame_context, guidance.row_is_negative())
    scheduler = scheduler_for(model, resolved, resolved.seed)
    channels, scale = model.pipe.unet.config.in_channels, model.vae_scale
    shape = (1, channels, request.frames, resolved.height // scale, resolved.width // scale)
    generator = torch.Generator("cpu").manual_seed(resolved.seed)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(model.device, model.dtype)
    timesteps = set_timesteps(scheduler, resolved.steps, 1.0, model.device)
    done = [0]

    def on_step(_latents: torch.Tensor) -> None:
        done[0] += 1
        if tracker is not None:
            tracker(done[0], len(timesteps))

    latents = denoise(model, scheduler, noise * scheduler.init_noise_sigma, timesteps, guidance, [generator],
                      resolved.width, resolved.height, None, on_step, None, resolved.eta, unet=unet)
    return latents, resolved


def _travelled_prompts(encoder, resolved: GenerationRequest, request: AnimationRequest):
    """Prompt travel inside one AnimateDiff clip: the guidance of the first keyframe and every frame's text
    conditioning, interpolated between keyframes (plain prompts; SDXL's pooled vector stays the first keyframe's)."""
    from sfumato.animation.keyframes import segment
    from sfumato.pipelines.guidance import Guidance, build_guidance
    from sfumato.prompts.schedule import has_syntax

    keys = sorted(request.prompts)
    texts = [request.prompts[k] for k in keys]
    if any(has_syntax(t) or "<lora:" in t for t in texts):
        raise InvalidRequest("motion-mode keyframes are plain prompts (no AND, prompt editing or LoRA tags)")
    many = build_guidance(encoder, texts, [resolved.negative_prompt] * len(texts), resolved.cfg_scale,
                          resolved.clip_skip, resolved.steps, directions=resolved.directions)
    first = Guidance([many.parts[0]], [many.negatives[0]], resolved.cfg_scale, many.encoded, many.zero_negative,
                     many.shift)
    frames = []
    for frame in range(request.frames):
        a, b, t = segment(keys, frame)
        start, end = many.encoded[request.prompts[a]].embeds, many.encoded[request.prompts[b]].embeds
        frames.append(start + t * (end - start) + (many.shift.embeds if many.shift is not None else 0))
    return first, torch.cat(frames)


def animate_motion(engine: "Engine", request: AnimationRequest, base: GenerationRequest,
                   tracker: "FrameProgress") -> list[GeneratedImage]:
    """The clip's frames, decoded eight at a time."""
    from sfumato.output import infotext
    from sfumato.pipelines.steps import decode_latents, to_pil

    latents, resolved = motion_latents(engine, request, base, tracker)
    model = engine.load(resolved.model)
    flat = latents[0].permute(1, 0, 2, 3)  # [F, C, h, w]
    images = [image for k in range(0, len(flat), 8) for image in to_pil(decode_latents(model, flat[k:k + 8]))]
    text = infotext(resolved, resolved.seed, resolved.subseed, model.info.name, model.hash)
    text += f", Motion module: {Path(request.motion_adapter).stem}, Context: {request.context_length}/" \
            f"{request.context_overlap}"
    return [GeneratedImage(image, resolved.seed, resolved.subseed, text, resolved, k)
            for k, image in enumerate(images)]
