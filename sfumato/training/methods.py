"""What each training method trains and what it saves.

scratch            a new UNet (from a diffusers config) on a frozen VAE and a frozen transformers text encoder
full               every UNet weight of an existing model
lora               peft LoRA on the UNet attention (optionally the text encoders); diffusers + kohya files
dreambooth         full (or LoRA) fine-tune on instance images + engine-generated class images (prior loss)
oft                peft orthogonal fine-tuning of the UNet attention
textual-inversion  new token embeddings in the text encoder, saved in the A1111/diffusers format
controlnet         a ControlNet (a trainable copy of the UNet encoder behind zero convolutions) on control maps
                   that a preprocessor computes from each training image; the UNet stays frozen
lcm                latent consistency distillation of the model into a few-step LCM-LoRA or full model (lcm.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file

from sfumato.errors import InvalidRequest
from sfumato.models.families import SD_BETAS
from sfumato.training.config import TrainConfig
from sfumato.training.data import Dataset, Example, scan_folder
from sfumato.models.folder import save_model_folder
from sfumato.models.loader import MINILM
from sfumato.training.setup import (ATTENTION_TARGETS, Lora, Method, TrainSetup, add_lora, load_base, save_lora,
                                    unet_setup)

ADAPTER_METADATA_KEY = "sfumato.adapter"


# ------------------------------------------------------------------ saving


# ------------------------------------------------------------------ builders


def build_scratch(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from sfumato.models.detect import describe
    from sfumato.models.loader import referenced_text_encoder

    reference = MINILM if config.text_encoder == "minilm" else {"path": str(Path(config.text_encoder).resolve())}
    parts = referenced_text_encoder(reference, torch.float32)
    try:
        unet_config = json.loads(Path(config.unet_config).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read UNet config {config.unet_config}: {exc}") from None
    hidden = parts["text_encoder"].config.hidden_size
    if config.arch == "dit":  # a DiT denoiser in the UNet's place (models.textdit)
        from sfumato.models.textdit import build_textdit

        unet = build_textdit(unet_config, hidden)
    else:
        unet_config["cross_attention_dim"] = hidden
        if unet_config.get("class_embed_type") == "projection":
            unet_config["projection_class_embeddings_input_dim"] = hidden
        unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_pretrained(str(config.vae), torch_dtype=torch.float32)
    scheduler = DDPMScheduler(**SD_BETAS, prediction_type=config.prediction_type or "epsilon", clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    settings = {"family": "ldm", "text_chunk_length": config.text_chunk_length}
    if config.text_encoder == "minilm":
        settings["text_encoder"] = MINILM
    folder = save_model_folder(pipe, Path(config.output) / "model", settings)
    info = describe(folder)
    vae.requires_grad_(False)
    parts["text_encoder"].requires_grad_(False)
    setup = TrainSetup(pipe, info, device, unet, dict(unet.named_parameters()), chunk_length=config.text_chunk_length,
                       method=Scratch(folder))
    say(f"scratch {'DiT' if config.arch == 'dit' else 'UNet'}: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M "
        f"parameters; text encoder "
        f"{type(parts['text_encoder']).__name__} ({hidden}-d), VAE latent x{setup.vae_scale}")
    return setup


def build_full(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    _, loaded = load_base(config, device)
    return unet_setup(config, device, loaded)


def build_lora(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    _, loaded = load_base(config, device)
    setup = unet_setup(config, device, loaded)
    setup.extra["rank"] = config.rank
    add_lora(setup, config)
    setup.method = Lora()
    say(f"LoRA rank {config.rank}: {sum(p.numel() for p in setup.trainable.values()) / 1e6:.3f}M trainable parameters")
    return setup


def build_oft(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    from peft import OFTConfig

    _, loaded = load_base(config, device)
    setup = unet_setup(config, device, loaded)
    unet = setup.pipe.unet
    unet.requires_grad_(False)
    oft = OFTConfig(r=0, oft_block_size=config.rank, target_modules=ATTENTION_TARGETS)
    unet.add_adapter(oft)
    setup.trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    setup.method = Oft(oft)
    say(f"OFT block size {config.rank}: {sum(p.numel() for p in setup.trainable.values()) / 1e6:.3f}M trainable parameters")
    return setup


def save_adapter(unet, peft_config, path: Path, kind: str) -> Path:
    """A peft adapter of the UNet as one safetensors file whose metadata carries its peft config."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_config.to_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path),
              metadata={ADAPTER_METADATA_KEY: kind, "peft_config": json.dumps(config, default=str)})
    return path


def build_dreambooth(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    engine, loaded = load_base(config, device)
    setup = unet_setup(config, device, loaded)
    class_dir = Path(config.class_data) if config.class_data else Path(config.output) / "class_images"
    generate_class_images(engine, config, class_dir, say)
    if config.use_lora:
        add_lora(setup, config)
    setup.method = DreamBooth(class_dir, lora=config.use_lora)
    return setup


def generate_class_images(engine, config: TrainConfig, folder: Path, say: Callable[[str], None]) -> int:
    """Class images for prior preservation, generated once by the engine and reused (cached on disk)."""
    from sfumato.requests import GenerationRequest

    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("class-*.png"))
    missing = config.num_class_images - len(have)
    if missing > 0:
        say(f"generating {missing} class images for {config.class_prompt!r} in {folder}")
        size = engine.describe().native_size
        for i in range(len(have), config.num_class_images):
            request = GenerationRequest(prompt=config.class_prompt, seed=config.seed + i, steps=config.validation_steps,
                                        width=size, height=size)
            engine.generate(request).images[0].image.save(folder / f"class-{i:05d}.png")
            (folder / f"class-{i:05d}.txt").write_text(config.class_prompt)
    return max(missing, 0)


def build_textual_inversion(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    _, loaded = load_base(config, device)
    pipe = loaded.pipe
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    tokens = [config.token] + [f"{config.token}_{i}" for i in range(1, config.num_vectors)]
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise InvalidRequest(f"token {config.token!r} already exists in the tokenizer; pick a new word")
    init_ids = tokenizer(config.initializer_token, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        raise InvalidRequest(f"initializer token {config.initializer_token!r} must be a single token")
    encoder.resize_token_embeddings(len(tokenizer))
    embeddings = encoder.get_input_embeddings().weight
    new_ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        embeddings[new_ids] = embeddings[init_ids[0]].clone()
    original = embeddings.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[new_ids] = False
    embeddings.requires_grad_(True)
    setup = TrainSetup(pipe, loaded.info, device, encoder, {"token_embedding": embeddings}, live_text=True,
                       chunk_length=int(loaded.info.settings.get("text_chunk_length", 75)))

    setup.method = TextualInversion(embeddings, keep, original, new_ids, " ".join(tokens))
    return setup


def build_controlnet(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    from diffusers import ControlNetModel


    from sfumato.control import preprocessors

    preprocessor = preprocessors.get(config.preprocessor)
    _, loaded = load_base(config, device)
    pipe = loaded.pipe
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    # the conditioning embedding halves the map once per latent down-scale of the VAE (3 times for SD's 8x)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    channels = (16, 32, 96, 256)[: scale.bit_length()]
    if config.controlnet:
        controlnet = ControlNetModel.from_pretrained(str(config.controlnet), torch_dtype=torch.float32).to(device)
    else:
        controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=channels).to(device)
    controlnet.requires_grad_(True)
    chunk = int(loaded.info.settings.get("text_chunk_length", 75))
    setup = TrainSetup(pipe, loaded.info, device, controlnet, dict(controlnet.named_parameters()), chunk_length=chunk)
    augmented = _augmented_batches(config, setup, preprocessor.name) if config.control_augment > 0 else None
    setup.method = ControlNet(controlnet, preprocessor.name, config, device, loaded.info, augmented)
    say(f"ControlNet ({preprocessor.name} maps): {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f}M "
        f"trainable parameters, conditioning embedding {channels}")
    return setup


def _augmented_batches(config: TrainConfig, setup: TrainSetup, preprocessor: str):
    """Latents and control maps of randomly warped training images (scale 0.55-1.1, shift up to a quarter of the
    side, rotation up to 30 degrees, white fill), so the ControlNet learns to move, resize and turn what the prompt
    names (an emoji model has memorised one layout per name). Uses its own copy of the VAE (the pipeline's is
    parked during training)."""
    import copy

    from PIL import Image

    from sfumato.control import preprocessors
    from sfumato.training.data import load_pixels

    vae = copy.deepcopy(setup.pipe.vae).to(setup.device).eval()
    shift = vae.config.get("shift_factor") or 0.0

    def warp(image: Image.Image, rng) -> Image.Image:
        if rng.random() >= config.control_augment:
            return image
        width, height = image.size
        scale, angle = rng.uniform(0.55, 1.1), rng.uniform(-30, 30)
        dx, dy = rng.uniform(-0.25, 0.25) * width, rng.uniform(-0.25, 0.25) * height
        turned = image.rotate(angle, Image.Resampling.BICUBIC, translate=(dx, dy), fillcolor=(255, 255, 255))
        return _scaled(turned, scale)

    def batch(features, indices: list[int], flips: list[bool], rng) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, maps = [], []
        for index, flip in zip(indices, flips):
            tensor = load_pixels(features.dataset.examples[index].path, *features.plan.sizes[index], flip)
            array = ((tensor.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype("uint8")
            image = warp(Image.fromarray(array), rng)
            mapped = preprocessors.run(preprocessor, image, None, config.threshold_a, config.threshold_b)
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
            maps.append(torch.from_numpy(np.asarray(mapped, dtype=np.float32) / 255).permute(2, 0, 1))
        with torch.no_grad():
            posterior = vae.encode(torch.stack(pixels).to(setup.device)).latent_dist
            latents = (posterior.sample() - shift) * vae.config.scaling_factor
        return latents, torch.stack(maps).to(setup.device)

    return batch


def _scaled(image, scale: float):
    """Zoom about the centre by `scale` (smaller: white margin; larger: cropped), keeping the size."""
    from PIL import Image

    width, height = image.size
    small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
    return canvas


# ------------------------------------------------------------------ what each method adds to the loop


class Scratch(Method):
    """A new model: saved as a folder with the settings written when it was built (text encoder reference...)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        return save_model_folder(setup.pipe, run_dir / "model", json.loads((self.folder / "sfumato.json").read_text()))


class Oft(Method):
    """peft orthogonal fine-tuning of the UNet attention: one adapter file with its peft config."""

    def __init__(self, peft_config):
        self.peft_config = peft_config

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        return save_adapter(setup.pipe.unet, self.peft_config, run_dir / "oft.safetensors", "oft")


class DreamBooth(Method):
    """Instance images under the instance prompt plus class images under the class prompt (prior preservation,
    weighted by `prior_loss_weight`); a full fine-tune or a LoRA."""

    def __init__(self, class_dir: Path, lora: bool):
        self.class_dir, self.lora = class_dir, lora

    def dataset(self, setup: TrainSetup, config: TrainConfig, say: Callable[[str], None]) -> tuple[Dataset, list]:
        instance = scan_folder(Path(config.data))
        classes = scan_folder(self.class_dir)
        examples = [Example(e.path, (config.instance_prompt,), e.width, e.height) for e in instance.examples]
        examples += [Example(e.path, (config.class_prompt,), e.width, e.height) for e in classes.examples]
        weights = [1.0] * len(instance.examples) + [config.prior_loss_weight] * len(classes.examples)
        return Dataset(instance.root, examples, instance.skipped + classes.skipped), weights

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        return save_lora(setup, run_dir) if self.lora else super().save(setup, config, run_dir)


class TextualInversion(Method):
    """New token embeddings: only their rows learn (the others are put back after every step); captions name the
    tokens; saved as an A1111/diffusers embedding file."""

    def __init__(self, embeddings: torch.Tensor, keep: torch.Tensor, original: torch.Tensor, new_ids: list[int],
                 phrase: str):
        self.embeddings, self.keep, self.original, self.new_ids, self.phrase = embeddings, keep, original, new_ids, phrase

    def after_step(self, setup: TrainSetup) -> None:
        with torch.no_grad():
            self.embeddings[self.keep] = self.original[self.keep]

    def dataset(self, setup: TrainSetup, config: TrainConfig, say: Callable[[str], None]) -> tuple[Dataset, list]:
        data = scan_folder(Path(config.data))
        phrase = self.phrase
        examples = []
        for e in data.examples:
            caps = tuple(c.replace(config.token, phrase) if config.token in c else
                         (f"a photo of {phrase}, {c}" if c else f"a photo of {phrase}") for c in e.captions)
            examples.append(Example(e.path, caps, e.width, e.height))
        return Dataset(data.root, examples, data.skipped), [1.0] * len(examples)

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        path = run_dir / f"{config.token}.safetensors"
        save_file({"emb_params": self.embeddings[self.new_ids].detach().cpu().contiguous()}, str(path))
        return path


class ControlNet(Method):
    """A ControlNet on the maps a preprocessor makes of each training image (computed once, kept in memory), or on
    randomly warped images (`control_batch`, with `control_augment`); saved with its preprocessor and base."""

    def __init__(self, controlnet, preprocessor: str, config: TrainConfig, device: torch.device, base_info,
                 augmented=None):
        self.controlnet, self.preprocessor, self.config, self.device, self.base_info = (controlnet, preprocessor,
                                                                                     config, device, base_info)
        self.control_batch = augmented
        self._maps: dict[tuple[int, bool], torch.Tensor] = {}

    def control_maps(self, features, indices: list[int], flips: list[bool]) -> torch.Tensor:
        """The preprocessor's map of each image at its training size, in [0, 1]."""
        from PIL import Image

        from sfumato.control import preprocessors
        from sfumato.training.data import load_pixels

        for key in zip(indices, flips):
            if key not in self._maps:
                example = features.dataset.examples[key[0]]
                pixels = load_pixels(example.path, *features.plan.sizes[key[0]], key[1])
                array = ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype("uint8")
                mapped = preprocessors.run(self.preprocessor, Image.fromarray(array), None, self.config.threshold_a,
                                           self.config.threshold_b)
                self._maps[key] = torch.from_numpy(np.array(mapped)).permute(2, 0, 1).contiguous()
        return torch.stack([self._maps[key] for key in zip(indices, flips)]).float().div(255).to(self.device)

    def save(self, setup: TrainSetup, config: TrainConfig, run_dir: Path) -> Path:
        out = run_dir / "controlnet"
        self.controlnet.save_pretrained(str(out), safe_serialization=True)
        (out / "sfumato.json").write_text(json.dumps({"preprocessor": self.preprocessor, "base": self.base_info.name,
                                                      "family": self.base_info.family.name}, indent=2))
        return out


def build_lcm(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    from sfumato.training.lcm import build_lcm as build

    return build(config, device, say)


BUILDERS = {"scratch": build_scratch, "full": build_full, "lora": build_lora, "dreambooth": build_dreambooth,
            "oft": build_oft, "textual-inversion": build_textual_inversion, "controlnet": build_controlnet,
            "lcm": build_lcm}


def build_setup(config: TrainConfig, device: torch.device, say: Callable[[str], None]) -> TrainSetup:
    return BUILDERS[config.method](config, device, say)
