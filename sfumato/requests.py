"""Typed generation requests and results. Validation lives here, once, for every adapter."""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Any

from sfumato.errors import InvalidRequest

MAX_SEED = 2**32 - 1
MIN_SIDE, MAX_SIDE = 16, 4096
MAX_PIXELS = 4096 * 4096
OUTPAINT_SIDES = ("left", "right", "up", "down")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
LATENT_UPSCALERS = ("latent", "latent-nearest")  # hires fix in latent space; any upscaler name works in pixels


@dataclass
class GenerationRequest:
    """Everything that determines an image. The same names are used by the CLI, JSON and PNG metadata.

    `None` means "use the model's default" (size, sampler, steps, cfg_scale) and is resolved by the engine;
    a seed of -1 means "pick a random seed", resolved before generation and recorded in the result.
    """

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    vae: str | None = None  # VAE override (path or name in $SFUMATO_HOME/models/vae); None: the model's own
    sampler: str | None = None
    preset: str | None = None  # few-step presets: lcm, turbo, lightning, hyper, tcd (sampling.presets)
    timestep_spacing: str | None = None  # leading / linspace / trailing; None: the model's (or its preset's)
    eta: float | None = None  # DDIM eta / TCD gamma; None: the sampler's default
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    init_image: str | None = None
    mask: str | None = None
    mask_blur: int = 4
    inpaint_full_image_overlay: bool = True
    inpaint_fill: str = "original"  # masked content the img2img starts from: original pixels, or "fill" (surroundings)
    strength: float = 0.75
    outpaint: dict[str, int] = field(default_factory=dict)
    tile: bool = False
    hires_scale: float = 1.0
    hires_strength: float = 0.55
    hires_steps: int | None = None
    hires_upscaler: str = "latent"  # latent, latent-nearest, or an upscaler name (`sfumato upscalers`)
    loras: list[tuple[str, float]] = field(default_factory=list)
    prediction_type: str | None = None  # override the model's (epsilon / v_prediction), for mis-detected files
    styles: list[str] = field(default_factory=list)  # names in $SFUMATO_HOME/styles.csv, applied in order
    combinatorial: bool = False  # dynamic prompts: every combination instead of one random draw per image
    template: str | None = None  # the prompt as given, once styles/dynamic prompts were resolved (set by the engine)
    image_prompts: list[str] = field(default_factory=list)  # each image's resolved dynamic prompt (set by the engine)
    controls: list[dict[str, Any]] = field(default_factory=list)  # ControlNet / T2I-Adapter units (control.units)
    ip_adapter: str | None = None  # IP-Adapter weights (path or name in $SFUMATO_HOME/models/ip-adapter)
    ip_images: list[str] = field(default_factory=list)  # its reference images
    ip_scale: float = 1.0
    ip_image_encoder: str | None = None  # the CLIP vision encoder folder (default: image_encoder/ beside the adapter)
    p2p_source: str | None = None  # prompt-to-prompt: the prompt of the image to edit (same seed); prompt = the edit
    p2p_cross: float = 0.8  # fraction of steps that keep the source's cross-attention maps
    p2p_self: float = 0.4  # fraction of steps that keep its self-attention maps
    instruction_edit: bool = False  # InstructPix2Pix: edit the init image by the prompt (set for 8-channel models)
    image_cfg_scale: float = 1.5  # InstructPix2Pix's image guidance (A1111's "Image CFG Scale")
    init_upscaler: str | None = None  # pass the init image through this upscaler first (restoration), then resize
    sd_upscale: float = 1.0  # > 1: upscale the image by this factor, then img2img it tile by tile (A1111 SD upscale)
    sd_upscale_upscaler: str = "R-ESRGAN 4x+"
    sd_upscale_overlap: int = 64  # pixels shared by neighbouring tiles, blended
    sd_upscale_strength: float = 0.3  # denoising strength of each tile's img2img
    colorize: bool = False  # the init image's luminance with the generated colours (Lab): colourise a grayscale photo
    cache_interval: int = 1  # step caching (DeepCache): a full UNet call every N steps, the outer branch between
    cache_branch: int = 0  # the outer UNet layers that stay live on cached steps (0: the outermost only)
    cache_threshold: float = 0.0  # SD3/FLUX: adaptive first-block cache (cached while the change stays below this)
    token_merging_ratio: float = 0.0  # ToMe: share of tokens merged before full-resolution self-attention (A1111)
    # conditioning directions: (toward, away_from, strength) adds strength * (cond(toward) - cond(away_from)) to the
    # prompt's conditioning ("+ smiling"); prompt travel is the direction from one keyframe prompt to the next
    directions: list[tuple[str, str, float]] = field(default_factory=list)
    # style-aligned batch: every image shares self-attention with the batch's first image at this strength (0: off;
    # pipelines.shared_attention)
    consistent: float = 0.0
    # FLUX.1 Kontext: the image its prompt (an instruction) edits, fitted to the output size; an init image without a
    # mask means this on a Kontext model (A1111 img2img, OpenAI edits)
    reference_image: str | None = None

    def validate(self) -> GenerationRequest:
        """Raise `InvalidRequest` with a one-line message for the first bad field; return self."""
        if not isinstance(self.prompt, str):
            raise InvalidRequest("prompt must be a string")
        for name in ("negative_prompt", "hires_upscaler", "sd_upscale_upscaler"):
            if not isinstance(getattr(self, name), str):
                raise InvalidRequest(f"{name} must be a string")
        for name in ("model", "sampler", "init_image", "mask", "prediction_type", "ip_adapter", "ip_image_encoder",
                     "p2p_source", "init_upscaler", "preset", "timestep_spacing", "vae", "reference_image"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InvalidRequest(f"{name} must be a string or null")
        for name in ("styles", "image_prompts", "ip_images"):
            if not isinstance(getattr(self, name), list) or not all(isinstance(v, str) for v in getattr(self, name)):
                raise InvalidRequest(f"{name} must be a list of strings")
        if len(self.styles) > MAX_STYLES:
            raise InvalidRequest(f"at most {MAX_STYLES} styles, got {len(self.styles)}")
        if self.template is not None and not isinstance(self.template, str):
            raise InvalidRequest("template must be a string or null")
        for name in ("tile", "inpaint_full_image_overlay", "combinatorial", "instruction_edit", "colorize"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequest(f"{name} must be true or false")
        if not isinstance(self.outpaint, dict):
            raise InvalidRequest("outpaint must map sides (left, right, up, down) to pixels")
        if not isinstance(self.loras, (list, tuple)) or not all(
                isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in self.loras):
            raise InvalidRequest("loras must be a list of (name, weight) pairs")
        _check_range("steps", self.steps, 1, 150, integer=True)
        _check_range("cfg_scale", self.cfg_scale, 0.0, 30.0)
        _check_range("batch_size", self.batch_size, 1, 64, integer=True)
        _check_range("batch_count", self.batch_count, 1, 1000, integer=True)
        _check_range("clip_skip", self.clip_skip, 1, 12, integer=True)
        _check_range("strength", self.strength, 0.0, 1.0)
        _check_range("image_cfg_scale", self.image_cfg_scale, 0.0, 30.0)
        _check_range("ip_scale", self.ip_scale, 0.0, 2.0)
        _check_range("p2p_cross", self.p2p_cross, 0.0, 1.0)
        _check_range("p2p_self", self.p2p_self, 0.0, 1.0)
        if self.p2p_source is not None and (self.init_image or self.hires_scale > 1):
            raise InvalidRequest("prompt-to-prompt edits regenerate from noise: no init image or hires fix")
        if bool(self.ip_adapter) != bool(self.ip_images):
            raise InvalidRequest("an IP-Adapter needs reference images (--ip-image) and reference images need "
                                 "--ip-adapter")
        if len(self.ip_images) > 8:
            raise InvalidRequest(f"at most 8 IP-Adapter reference images, got {len(self.ip_images)}")
        _check_range("subseed_strength", self.subseed_strength, 0.0, 1.0)
        _check_range("hires_strength", self.hires_strength, 0.0, 1.0)
        _check_range("hires_scale", self.hires_scale, 1.0, 4.0)
        _check_range("hires_steps", self.hires_steps, 1, 150, integer=True)
        _check_range("mask_blur", self.mask_blur, 0, 256, integer=True)
        for name in ("seed", "subseed"):
            value = getattr(self, name)
            if not isinstance(value, int) or not (value == -1 or 0 <= value <= MAX_SEED):
                raise InvalidRequest(f"{name} must be -1 (random) or an integer in 0..{MAX_SEED}, got {value!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            _check_range(name, value, MIN_SIDE, MAX_SIDE, integer=True)
            if value % 8:
                raise InvalidRequest(f"{name} must be a multiple of 8, got {value} (try {round(value / 8) * 8 or 8})")
        _check_range("eta", self.eta, 0.0, 1.0)
        if self.timestep_spacing not in (None, *TIMESTEP_SPACINGS):
            raise InvalidRequest(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, "
                                 f"got {self.timestep_spacing!r}")
        _check_range("cache_interval", self.cache_interval, 1, 10, integer=True)
        _check_range("cache_branch", self.cache_branch, 0, 64, integer=True)
        _check_range("token_merging_ratio", self.token_merging_ratio, 0.0, 0.9)
        _check_range("cache_threshold", self.cache_threshold, 0.0, 1.0)
        speed_levers = self.cache_interval > 1 or self.token_merging_ratio or self.cache_threshold
        if speed_levers and (self.p2p_source is not None or self.instruction_edit):
            raise InvalidRequest("step caching and token merging do not combine with prompt-to-prompt or "
                                 "instruction edits")
        _check_range("sd_upscale", self.sd_upscale, 1.0, 4.0)
        _check_range("sd_upscale_overlap", self.sd_upscale_overlap, 0, 512, integer=True)
        _check_range("sd_upscale_strength", self.sd_upscale_strength, 0.0, 1.0)
        growth = (self.hires_scale * self.sd_upscale) ** 2
        if self.width and self.height and self.width * self.height * growth > MAX_PIXELS:
            raise InvalidRequest(f"image of {self.width}x{self.height} (x{self.hires_scale:g} hires, "
                                 f"x{self.sd_upscale:g} SD upscale) exceeds {MAX_PIXELS} pixels")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise InvalidRequest(f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        for name in ("hires_upscaler", "sd_upscale_upscaler", "init_upscaler"):
            value = getattr(self, name)
            if value is not None and (not value or len(value) > 256 or "\x00" in value):
                raise InvalidRequest(f"{name} must name an upscaler (see `sfumato upscalers`)")
        if self.inpaint_fill not in ("original", "fill"):
            raise InvalidRequest(f"inpaint_fill must be original or fill, got {self.inpaint_fill!r}")
        if (self.colorize or self.init_upscaler) and self.outpaint:
            raise InvalidRequest("colorize and init_upscaler do not combine with outpainting")
        if self.colorize and not self.init_image:
            raise InvalidRequest("colorize needs the image to colour (--init-image)")
        if self.init_upscaler and not self.init_image:
            raise InvalidRequest("init_upscaler needs an init image (--init-image)")
        if self.sd_upscale > 1 and (self.p2p_source is not None or self.instruction_edit or self.mask
                                    or self.outpaint or self.hires_scale > 1):
            raise InvalidRequest("SD upscale does not combine with prompt-to-prompt, instruction edits, masks, "
                                 "outpainting or hires fix")
        for side, pixels in self.outpaint.items():
            if side not in OUTPAINT_SIDES:
                raise InvalidRequest(f"outpaint side must be one of {', '.join(OUTPAINT_SIDES)}, got {side!r}")
            _check_range(f"outpaint {side}", pixels, 0, MAX_SIDE, integer=True)
            if pixels % 8:
                raise InvalidRequest(f"outpaint {side} must be a multiple of 8 pixels, got {pixels}")
        from sfumato.control.units import parse_units

        units = parse_units(self.controls)
        if self.consistent is None:
            raise InvalidRequest("consistent must be a number (0: off)")
        _check_range("consistent", self.consistent, 0.0, 2.0)
        sharing = [name for name, on in (("consistent batches", self.consistent > 0),
                                         ("reference units", any(u.is_reference for u in units))) if on]
        if sharing:
            other = [name for name, on in (("prompt-to-prompt", self.p2p_source is not None),
                                           ("instruction edits", self.instruction_edit),
                                           ("step caching", self.cache_interval > 1),
                                           ("SD upscale", self.sd_upscale > 1)) if on]
            if other:
                raise InvalidRequest(f"{' and '.join(sharing)} do not combine with {', '.join(other)}")
        if self.instruction_edit:
            if not self.init_image:
                raise InvalidRequest("an instruction edit needs the image to edit (--init-image)")
            used = [n for n, on in (("a mask", self.mask), ("outpainting", self.outpaint), ("control units",
                    self.controls), ("hires fix", self.hires_scale > 1)) if on]
            if used:
                raise InvalidRequest(f"instruction edits do not take {', '.join(used)}")
        if self.mask and not self.init_image:
            raise InvalidRequest("a mask needs an init image (--init-image)")
        if self.outpaint and not self.init_image:
            raise InvalidRequest("outpainting needs an init image (--init-image)")
        if self.outpaint and self.mask:
            raise InvalidRequest("outpaint builds its own mask; do not pass --mask with it")
        _check_directions(self.directions)
        for name, weight in self.loras:
            if not isinstance(name, str) or not name or "\x00" in name:
                raise InvalidRequest("each LoRA needs a name or path")
            _check_range(f"LoRA {name} weight", weight, -10.0, 10.0)
        return self

    def texts(self) -> list[tuple[str, str]]:
        """(field, text) of every text field the prompt parsers, the encoder or the prompt policy read."""
        out = [("prompt", self.prompt), ("negative_prompt", self.negative_prompt)]
        if self.p2p_source is not None:
            out.append(("p2p_source", self.p2p_source))
        if self.template is not None:
            out.append(("template", self.template))
        for k, (toward, away, _strength) in enumerate(self.directions):
            out += [(f"directions[{k}]", toward), (f"directions[{k}]", away)]
        out += [(f"styles[{k}]", name) for k, name in enumerate(self.styles)]
        out += [("image prompt", text) for text in dict.fromkeys(self.image_prompts)]
        return out

    def conditioning_texts(self) -> list[str]:
        """The texts that steer the image toward something (what the prompt policy reads): each image's prompt,
        both ends of every direction (a negative strength turns them round), the prompt-to-prompt source, and the
        negative prompt when a CFG scale below 1 weighs it positively ((1 - cfg) * uncond + cfg * cond)."""
        texts = list(dict.fromkeys(self.image_prompts)) or [self.prompt]
        texts += [text for toward, away, _strength in self.directions for text in (toward, away)]
        if self.p2p_source is not None:
            texts.append(self.p2p_source)
        if self.cfg_scale is not None and self.cfg_scale < 1 and self.negative_prompt:
            texts.append(self.negative_prompt)
        return texts

    def with_seeds_resolved(self, rng: random.Random | None = None) -> GenerationRequest:
        """Return a copy whose -1 seeds are replaced by random ones (A1111 semantics)."""
        rng = rng or random.Random()
        seed = self.seed if self.seed != -1 else rng.randint(0, MAX_SEED)
        subseed = self.subseed if self.subseed != -1 else rng.randint(0, MAX_SEED)
        return dataclasses.replace(self, seed=seed, subseed=subseed)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loras"] = [[name, weight] for name, weight in self.loras]
        data["directions"] = [list(d) for d in self.directions]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        check_known_fields(cls, data, "request")
        if "prompt" not in data:
            raise InvalidRequest("a request needs a prompt")
        data = dict(data)
        try:
            data["loras"] = [(str(name), float(weight)) for name, weight in data.get("loras") or []]
            data["outpaint"] = dict(data.get("outpaint") or {})
            data["directions"] = [(str(a), str(b), float(s)) for a, b, s in data.get("directions") or []]
        except (TypeError, ValueError):
            raise InvalidRequest("loras must be [name, weight] pairs, outpaint a mapping of sides to pixels and "
                                 "directions [toward, away_from, strength] triples") from None
        return cls(**data)


@dataclass
class UpscaleRequest:
    """Upscale one image (A1111 "Extras"): by `scale`, or to `width`x`height` (cropping to keep the aspect when
    `crop`), optionally blending a second upscaler's result at `upscaler_2_visibility`."""

    upscaler: str = "R-ESRGAN 4x+"
    scale: float = 4.0
    width: int | None = None
    height: int | None = None
    crop: bool = True
    upscaler_2: str | None = None
    upscaler_2_visibility: float = 0.0
    tile: int = 192  # input pixels per tile for network upscalers (0: the whole image at once)
    tile_overlap: int = 16

    def validate(self) -> UpscaleRequest:
        for name in ("upscaler", "upscaler_2"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or len(value) > 256):
                raise InvalidRequest(f"{name} must name an upscaler (see `sfumato upscalers`)")
        _check_range("scale", self.scale, 0.05, 8.0)
        _check_range("width", self.width, 1, 16384, integer=True)
        _check_range("height", self.height, 1, 16384, integer=True)
        _check_range("upscaler_2_visibility", self.upscaler_2_visibility, 0.0, 1.0)
        _check_range("tile", self.tile, 0, 4096, integer=True)
        _check_range("tile_overlap", self.tile_overlap, 0, 256, integer=True)
        if self.tile and self.tile_overlap >= self.tile:
            raise InvalidRequest("tile_overlap must be smaller than tile")
        if not isinstance(self.crop, bool):
            raise InvalidRequest("crop must be true or false")
        return self


@dataclass
class GeneratedImage:
    """One output image with the exact settings that produced it."""

    image: Any  # PIL.Image.Image
    seed: int
    subseed: int
    infotext: str
    request: GenerationRequest  # resolved request of the batch that produced this image
    batch_index: int  # position inside that batch (replay regenerates the batch and takes this one)
    nsfw: bool = False  # flagged by the image safety check (and blurred)
    nsfw_score: float | None = None  # the classifier's P(NSFW), when the check ran
    precision: str = "float32"  # the dtype of the model that made it (replay uses it)


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    request: GenerationRequest  # fully resolved request (seeds, sizes, sampler, steps)
    seconds: float = 0.0
    blocked: list[str] = field(default_factory=list)  # why images were withheld (safety mode `block`)


MAX_DIRECTIONS = 8
MAX_STYLES = 32


def check_known_fields(cls, data: Any, what: str) -> None:
    """Refuse a mapping with fields the dataclass `cls` does not have (typos must not be ignored silently)."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"a{'n' if what[0] in 'aeiou' else ''} {what} must be an object of fields")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise InvalidRequest(f"unknown {what} field(s): {', '.join(unknown)}")


def parse_direction(text: str, prompt: str) -> tuple[str, str, float]:
    """`TOWARD|AWAY_FROM[:STRENGTH]`, or the shorthand `ATTRIBUTE[:STRENGTH]` = ("PROMPT, ATTRIBUTE", "PROMPT")
    ("smiling:0.8" adds a smile; a negative strength takes it away). The strength defaults to 1."""
    body, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            body, strength = head, float(tail)
        except ValueError:
            pass
    toward, bar, away = body.partition("|")
    if not bar:
        toward, away = f"{prompt}, {body.strip()}" if prompt else body.strip(), prompt
    toward, away = toward.strip(), away.strip()
    if not toward and not away:
        raise InvalidRequest(f"direction {text!r}: give TOWARD|AWAY_FROM[:STRENGTH] or ATTRIBUTE[:STRENGTH]")
    return toward, away, strength


def _check_directions(directions: Any) -> None:
    if not isinstance(directions, (list, tuple)) or not all(
            isinstance(d, (list, tuple)) and len(d) == 3 for d in directions):
        raise InvalidRequest("directions must be a list of [toward, away_from, strength] triples")
    if len(directions) > MAX_DIRECTIONS:
        raise InvalidRequest(f"at most {MAX_DIRECTIONS} directions, got {len(directions)}")
    for toward, away, strength in directions:
        if not isinstance(toward, str) or not isinstance(away, str) or toward == away:
            raise InvalidRequest("a direction needs two different prompts (toward, away_from)")
        _check_range("direction strength", strength, -10.0, 10.0)


def _check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise InvalidRequest(f"{name} must be {kind}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}")
