"""Command-line adapter: parses flags into engine requests and prints results. Holds no generation logic."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from sfumato import __version__
from sfumato.errors import InvalidRequest, SfumatoError
from sfumato.requests import GenerationRequest, parse_direction

EXIT_USAGE = 2
EXIT_RUNTIME = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _lora_arg(text: str) -> tuple[str, float]:
    name, sep, weight = text.rpartition(":")
    if sep:
        try:
            return name, float(weight)
        except ValueError:
            pass
    return text, 1.0


def _outpaint_arg(text: str) -> dict[str, int]:
    pads: dict[str, int] = {}
    for part in text.split(","):
        side, sep, pixels = part.strip().partition("=")
        if not sep or not pixels.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected SIDE=PIXELS[,SIDE=PIXELS] (sides: left,right,up,down), got {text!r}")
        pads[side.strip()] = int(pixels)
    return pads


def _add_safety_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--safety", choices=["off", "blur", "block"], default=os.environ.get("SFUMATO_SAFETY", "blur"),
                        help="image check: blur (default) or block images the NSFW classifier flags, or off")
    parser.add_argument("--safety-threshold", type=float, default=0.8, help="NSFW score that triggers the check")
    parser.add_argument("--safety-policy", default=os.environ.get("SFUMATO_SAFETY_POLICY"),
                        help="prompt policy TOML (default: the packaged one; 'off' disables it)")


def _engine(args: argparse.Namespace):
    from sfumato.engine import Engine
    from sfumato.safety.classifier import SafetySettings

    safety = SafetySettings(args.safety, args.safety_threshold, args.safety_policy)
    return Engine(device=getattr(args, "device", None), dtype=getattr(args, "dtype", None), safety=safety,
                  compile=getattr(args, "compile", None), memory=memory_from_args(args))


def _add_memory_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory")
    presets = group.add_mutually_exclusive_group()
    presets.add_argument("--medvram", dest="memory_preset", action="store_const", const="medvram",
                         help="VAE tiling + slicing, one model part on the GPU at a time (A1111's --medvram)")
    presets.add_argument("--lowvram", dest="memory_preset", action="store_const", const="lowvram",
                         help="VAE tiling + slicing, attention slicing, layer-by-layer GPU offload")
    group.add_argument("--vae-tiling", action="store_true", help="decode/encode in overlapping tiles (large images)")
    group.add_argument("--vae-slicing", action="store_true", help="decode a batch one image at a time")
    group.add_argument("--attention-slicing", action="store_true", help="attention in slices (lower peak memory)")
    group.add_argument("--offload", choices=["model", "sequential"], help="CUDA: keep weights in RAM, move them to "
                                                                          "the GPU per component or per layer")
    group.add_argument("--quantize", choices=["int8", "fp8"], help="8-bit UNet/transformer weights, dequantized per "
                                                                  "layer (half the weight memory of float16)")


def memory_from_args(args: argparse.Namespace):
    from sfumato.memory import memory_settings

    if not hasattr(args, "vae_tiling"):
        return None
    return memory_settings(args.memory_preset, vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing,
                           attention_slicing=args.attention_slicing, offload=args.offload, quantize=args.quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfumato", description="Generate, edit, train, evaluate and serve latent-diffusion models.")
    parser.add_argument("--version", action="version", version=f"sfumato {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="txt2img / img2img / inpaint / outpaint / hires fix")
    gen.add_argument("prompt", help="prompt text; A1111 (emphasis:1.2), BREAK, <lora:name:w> and --ar/--no/... flags")
    gen.add_argument("--model", "-m", help="diffusers folder, .safetensors file, or a name in $SFUMATO_HOME/models")
    gen.add_argument("--vae", help="VAE override: .safetensors file, diffusers VAE folder, or a name in "
                                   "$SFUMATO_HOME/models/vae (default: the model's own)")
    gen.add_argument("--negative", "--negative-prompt", dest="negative_prompt", default="")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--cfg-scale", type=float)
    gen.add_argument("--sampler")
    gen.add_argument("--preset", help="few-step settings: lcm, turbo, lightning, hyper, tcd (fills sampler, steps, "
                                      "CFG and timestep spacing you did not set)")
    gen.add_argument("--fast", action="store_true",
                     help="few-step generation with the embedded model: the LCM sampler, 2 steps, CFG 1")
    gen.add_argument("--timestep-spacing", choices=["leading", "linspace", "trailing"])
    gen.add_argument("--cache-interval", type=int, default=1, metavar="N",
                     help="step caching (DeepCache): the full UNet every N steps, only its outer branch between "
                          "(2-5: faster, slightly different image; 1: off)")
    gen.add_argument("--cache-branch", type=int, default=0, help="outer UNet layers kept live on cached steps "
                                                                 "(0: the fewest, fastest)")
    gen.add_argument("--cache-threshold", type=float, default=0.0, metavar="T",
                     help="SD3/FLUX: adaptive first-block cache, steps reuse the other blocks' residual while the "
                          "first block's output changes by less than T (0.05-0.2)")
    gen.add_argument("--token-merging", type=float, default=0.0, metavar="RATIO",
                     help="ToMe: merge this share of tokens before full-resolution self-attention (0.3-0.6; pays "
                          "off at >= 1024 px)")
    gen.add_argument("--direction", action="append", default=[], metavar="TOWARD|AWAY[:STRENGTH]",
                     help="add STRENGTH x (TOWARD - AWAY) to the prompt's conditioning; ATTRIBUTE[:STRENGTH] is "
                          "short for 'PROMPT, ATTRIBUTE|PROMPT' ('smiling:0.8'; negative strengths take it away)")
    gen.add_argument("--eta", type=float, help="DDIM eta / TCD gamma")
    gen.add_argument("--seed", type=int, default=-1)
    gen.add_argument("--subseed", type=int, default=-1, help="variation seed")
    gen.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength 0..1")
    gen.add_argument("--width", "-W", type=int)
    gen.add_argument("--height", "-H", type=int)
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--batch-count", type=int, default=1)
    gen.add_argument("--clip-skip", type=int, default=1)
    gen.add_argument("--init-image")
    gen.add_argument("--strength", type=float, default=0.75, help="denoising strength for img2img/inpaint")
    gen.add_argument("--mask", help="inpaint mask: white = repaint")
    gen.add_argument("--instruction-edit", action="store_true",
                     help="InstructPix2Pix: edit --init-image by the prompt (automatic with an InstructPix2Pix model)")
    gen.add_argument("--image-cfg-scale", type=float, default=1.5,
                     help="InstructPix2Pix image guidance: how closely the edit keeps the input image")
    gen.add_argument("--mask-blur", type=int, default=4)
    gen.add_argument("--inpaint-fill", choices=["original", "fill"], default="original",
                     help="masked content img2img starts from: the original pixels, or filled from the surroundings")
    gen.add_argument("--outpaint", type=_outpaint_arg, default={}, help="e.g. left=64,down=32")
    gen.add_argument("--tile", action="store_true", help="seamless tiling")
    gen.add_argument("--lora", action="append", type=_lora_arg, default=[], metavar="PATH[:WEIGHT]")
    gen.add_argument("--hires-scale", type=float, default=1.0)
    gen.add_argument("--hires-strength", type=float, default=0.55)
    gen.add_argument("--hires-steps", type=int)
    gen.add_argument("--hires-upscaler", default="latent",
                     help="latent, latent-nearest, or an upscaler (`sfumato upscalers`), e.g. \"R-ESRGAN 4x+\"")
    gen.add_argument("--sd-upscale", type=float, default=1.0, metavar="SCALE",
                     help="SD upscale: upscale the image (the init image, else the generated one) by SCALE, then "
                          "img2img it in tiles of the generation size")
    gen.add_argument("--sd-upscale-upscaler", default="R-ESRGAN 4x+")
    gen.add_argument("--sd-upscale-overlap", type=int, default=64, help="pixels shared by neighbouring tiles")
    gen.add_argument("--sd-upscale-strength", type=float, default=0.3, help="denoising strength of each tile")
    gen.add_argument("--init-upscaler", help="pass --init-image through this upscaler first (restoration)")
    gen.add_argument("--colorize", action="store_true",
                     help="keep --init-image's lightness, take the colours from the generation (Lab)")
    gen.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                     help="override the model's prediction type (for a mis-detected single file)")
    gen.add_argument("--style", action="append", default=[], metavar="NAME",
                     help="apply a style from $SFUMATO_HOME/styles.csv (repeatable, A1111 format)")
    gen.add_argument("--combinatorial", action="store_true",
                     help="dynamic prompts: one image per combination of {a|b} variants and __wildcards__")
    gen.add_argument("--control", action="append", type=_control_arg, default=[], metavar="TYPE:IMAGE[:MODEL][:WEIGHT]",
                     help="a ControlNet / T2I-Adapter unit (repeatable): TYPE is the preprocessor (canny, scribble, "
                          "softedge, lineart, tile, color, none, ...); without MODEL the embedded model uses its "
                          "shipped sfumato-emoji-canny")
    gen.add_argument("--p2p-source", help="prompt-to-prompt: the prompt of the image to edit (same seed); PROMPT is "
                                          "the edited prompt, e.g. a word replaced or (word:1.5)")
    gen.add_argument("--p2p-cross", type=float, default=0.8, help="fraction of steps keeping the source's "
                                                                    "cross-attention maps")
    gen.add_argument("--p2p-self", type=float, default=0.4, help="fraction of steps keeping its self-attention maps")
    gen.add_argument("--ip-adapter", help="IP-Adapter weights (.safetensors path or name in $SFUMATO_HOME/models/"
                                          "ip-adapter); its CLIP vision encoder from image_encoder/ beside it")
    gen.add_argument("--ip-image", action="append", default=[], help="a reference image for the IP-Adapter (repeatable)")
    gen.add_argument("--ip-scale", type=float, default=1.0, help="IP-Adapter strength")
    gen.add_argument("--ip-image-encoder", help="the CLIP vision encoder folder (CLIPVisionModelWithProjection)")
    gen.add_argument("--control-start", type=float, default=0.0, help="control units start at this fraction of steps")
    gen.add_argument("--control-end", type=float, default=1.0, help="control units stop after this fraction")
    gen.add_argument("--control-mode", choices=["balanced", "prompt", "control"], default="balanced",
                     help="A1111's control mode: balanced, my prompt is more important, ControlNet is more important")
    gen.add_argument("--control-resize-mode", choices=["just_resize", "crop_and_resize", "resize_and_fill"],
                     default="crop_and_resize")
    gen.add_argument("--control-region", metavar="MASK", help="control units apply only where this mask is white "
                                                               "(A1111's effective region mask)")
    gen.add_argument("--output", "-o", type=Path, help="PNG file or folder (default: outputs/<date>/)")
    gen.add_argument("--json", action="store_true", help="print the result as JSON")
    gen.add_argument("--dry-run", action="store_true", help="print the fully resolved request and exit")
    gen.add_argument("--device")
    gen.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    _add_compile_arg(gen)
    _add_memory_args(gen)
    _add_safety_args(gen)

    info = commands.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image", type=Path)
    info.add_argument("--json", action="store_true")

    replay = commands.add_parser("replay", help="regenerate a PNG exactly from its metadata")
    replay.add_argument("image", type=Path)
    replay.add_argument("--output", "-o", type=Path, required=True)
    replay.add_argument("--model", help="use this model instead of the recorded path")
    replay.add_argument("--device")
    _add_safety_args(replay)

    convert = commands.add_parser("convert", help="pickle -> safetensors, single file <-> diffusers folder, -> GGUF")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path, help=".safetensors or .gguf file, or a folder")
    convert.add_argument("--quant", choices=["q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "bf16", "f16", "f32"],
                         help="GGUF: the type of the UNet's weight matrices (default q8_0)")
    convert.add_argument("--allow-pickle", action="store_true", help="load a pickle with torch.load(weights_only=True)")
    convert.add_argument("--half", action="store_true", help="store float16 weights")
    convert.add_argument("--add", type=Path, action="append", default=[], metavar="FILE",
                         help="SD3/FLUX: join a transformer-only SOURCE with these separate VAE / CLIP / T5 files "
                              "into one all-in-one TARGET .safetensors (repeatable)")

    pre = commands.add_parser("preprocess", help="show a control map: run a preprocessor (annotator) on an image")
    pre.add_argument("name", help="canny, scribble, threshold, softedge, lineart, shuffle, tile, blur, color, invert, "
                                  "inpaint, none")
    pre.add_argument("image", type=Path)
    pre.add_argument("--output", "-o", type=Path, required=True)
    pre.add_argument("--resolution", type=int, help="scale the short side to this first (default: as given)")
    pre.add_argument("--threshold-a", type=float)
    pre.add_argument("--threshold-b", type=float)

    models = commands.add_parser("models", help="list models, LoRAs and control models in $SFUMATO_HOME/models")
    models.add_argument("--json", action="store_true")

    tiny = commands.add_parser("make-tiny", help="write a tiny random-weight model (for tests and demos)")
    from sfumato.models.families import TINY_FAMILIES

    tiny.add_argument("family", choices=[*TINY_FAMILIES, "clip"], help="a model family, or clip (a CLIPModel)")
    tiny.add_argument("output", type=Path)
    tiny.add_argument("--inpainting", action="store_true")
    _add_train_parser(commands)
    from sfumato.cli_animate import add_animate_parser
    from sfumato.cli_batch import add_batch_parser
    from sfumato.cli_eval import add_eval_parsers
    from sfumato.cli_image import add_image_parsers
    from sfumato.cli_tools import add_tool_parsers

    add_eval_parsers(commands)
    add_image_parsers(commands)
    add_animate_parser(commands)
    add_batch_parser(commands)
    add_tool_parsers(commands)
    _add_serve_parser(commands)

    data = commands.add_parser("data", help="build training datasets")
    data.add_argument("dataset", choices=["emoji"], help="emoji: Noto Color Emoji renders with CLDR captions")
    data.add_argument("output", type=Path)
    data.add_argument("--size", type=int, default=64)
    data.add_argument("--base-only", action="store_true", help="skip skin-tone variants (1,870 base emoji)")
    data.add_argument("--limit", type=int)
    return parser


def _add_train_parser(commands) -> None:
    """`sfumato train METHOD`: one flag per TrainConfig field (defaults < --config TOML < flags)."""
    import dataclasses
    import typing

    from sfumato.training.config import METHODS, TrainConfig

    train = commands.add_parser("train", help="train: scratch, full, lora, dreambooth, oft, textual-inversion, vae, "
                                              "vqgan")
    train.add_argument("method", choices=[*METHODS, "vae", "vqgan"])
    train.add_argument("--config", type=Path, help="TOML file of training settings (data only)")
    train.add_argument("--vae-config", help="`train vae`: AutoencoderKL config.json overriding the small default")
    train.add_argument("--kl-weight", type=float, default=1e-6, help="`train vae`: KL term weight")
    vq = train.add_argument_group("train vqgan")
    vq.add_argument("--codebook-size", type=int, default=256, help="codes in the codebook")
    vq.add_argument("--disc-start", type=int, default=500, help="steps before the PatchGAN discriminator joins")
    vq.add_argument("--disc-weight", type=float, default=0.1, help="weight of the adversarial term")
    vq.add_argument("--restart-every", type=int, default=100, help="dead-code restart window in steps (0: never)")
    vq.add_argument("--holdout", type=float, default=0.1, help="share of images held out for the reported metrics")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "method":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif hint == list[str]:
            train.add_argument(flag, action="append", default=argparse.SUPPRESS)
        else:
            kind = next((t for t in (int, float) if t is hint or t in typing.get_args(hint)), str)
            train.add_argument(flag, type=kind, default=argparse.SUPPRESS)


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="HTTP server: OpenAI Images, A1111 /sdapi/v1 and native jobs APIs")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs --api-key)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--model", "-m", help="default model (else $SFUMATO_MODEL or the embedded one)")
    serve.add_argument("--api-key", default=os.environ.get("SFUMATO_API_KEY"),
                       help="require Authorization: Bearer KEY (visible in `ps`: prefer $SFUMATO_API_KEY or "
                            "--api-key-file)")
    serve.add_argument("--api-key-file", type=Path, default=os.environ.get("SFUMATO_API_KEY_FILE"),
                       help="read the API key from this file (first line); or set $SFUMATO_API_KEY_FILE")
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback bind without a key")
    serve.add_argument("--max-batch-size", type=int, default=8, help="images per batch across jobs (1 = no batching)")
    serve.add_argument("--batch-wait-ms", type=float, default=30.0,
                       help="a batch that is not full waits this long after its last new job for more compatible "
                            "jobs (10 times this at most)")
    serve.add_argument("--queue-size", type=int, default=256, help="unfinished jobs before answering 429")
    serve.add_argument("--preview", choices=["cheap", "full", "off"], default="cheap",
                       help="step previews while a client watches: a linear latent->RGB map (cheap), a VAE decode "
                            "(full), or none")
    serve.add_argument("--data-dir", type=Path, default=Path("sfumato-server"), help="job database and images")
    serve.add_argument("--store", default=os.environ.get("SFUMATO_STORE"), metavar="URL",
                       help="job store: sqlite (data-dir/jobs.sqlite3, default) or postgresql://user@host/db, one "
                            "queue for several servers (they must share --data-dir); or set $SFUMATO_STORE")
    serve.add_argument("--store-lease", type=float, default=30.0, metavar="S",
                       help="shared store: a running job whose server has been silent this long runs again elsewhere")
    serve.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    serve.add_argument("--allowed-host", action="append", default=[],
                       help="answer requests for this Host name besides loopback names and the bind address "
                            "(repeatable; e.g. the name a reverse proxy forwards)")
    ray = serve.add_argument_group("Ray Serve (several replicas, one queue)")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="serve through Ray Serve: a local Ray instance, or the cluster at ADDRESS")
    ray.add_argument("--replicas", type=int, default=1, help="generation replicas, each with its own engine")
    ray.add_argument("--autoscale", metavar="MIN,MAX", help="scale replicas between MIN and MAX on load")
    ray.add_argument("--autoscale-target", type=float, default=2.0,
                     help="requests in flight per replica that autoscaling aims at")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (fractions share one)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    _add_compile_arg(serve)
    _add_memory_args(serve)
    serve.add_argument("--max-side", type=int, default=2048)
    serve.add_argument("--max-steps", type=int, default=150)
    serve.add_argument("--max-images", type=int, default=16, help="images per request")
    serve.add_argument("--max-frames", type=int, default=240, help="frames per animation")
    serve.add_argument("--max-prompt-chars", type=int, default=4000, help="characters per text field")
    serve.add_argument("--max-upload-mb", type=int, default=20, help="bytes per uploaded image or video")
    serve.add_argument("--max-body-mb", type=int, default=64,
                       help="request body of routes that take images (others: --max-text-body-kb)")
    serve.add_argument("--max-text-body-kb", type=int, default=1024, help="request body of every other route")
    serve.add_argument("--device")
    _add_safety_args(serve)


def _add_compile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the UNet/transformer and VAE decoder (same image, faster after a one-time "
                             "compile cached under $SFUMATO_HOME/cache/compile; reduce-overhead = CUDA graphs)")


def _fast_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--fast: the embedded model at its few-step settings (other models: --preset or an LCM-LoRA)."""
    if not getattr(args, "fast", False):
        return {"model": args.model, "preset": args.preset, "steps": args.steps}
    from sfumato.models.embedded import FAST_SETTINGS, embedded_model

    if args.model or args.preset:
        raise InvalidRequest("--fast is the embedded model's few-step setting; for other models use --preset "
                             "lcm|turbo|lightning|hyper|tcd or an LCM-LoRA")
    if embedded_model() is None:
        raise InvalidRequest("--fast needs the embedded model, which this install does not carry")
    return {"model": str(embedded_model()), "preset": FAST_SETTINGS["preset"],
            "steps": args.steps or FAST_SETTINGS["steps"]}


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, **_fast_settings(args), vae=args.vae,
        sampler=args.sampler, timestep_spacing=args.timestep_spacing, eta=args.eta, cfg_scale=args.cfg_scale,
        seed=args.seed, subseed=args.subseed,
        subseed_strength=args.subseed_strength, width=args.width, height=args.height, batch_size=args.batch_size,
        batch_count=args.batch_count, clip_skip=args.clip_skip, init_image=args.init_image, mask=args.mask,
        mask_blur=args.mask_blur, inpaint_fill=args.inpaint_fill, strength=args.strength, outpaint=args.outpaint, tile=args.tile,
        hires_scale=args.hires_scale, hires_strength=args.hires_strength, hires_steps=args.hires_steps,
        hires_upscaler=args.hires_upscaler, loras=list(args.lora), prediction_type=args.prediction_type,
        styles=list(args.style), combinatorial=args.combinatorial, instruction_edit=args.instruction_edit,
        image_cfg_scale=args.image_cfg_scale, ip_adapter=args.ip_adapter, ip_images=list(args.ip_image),
        ip_scale=args.ip_scale, ip_image_encoder=args.ip_image_encoder, p2p_source=args.p2p_source,
        p2p_cross=args.p2p_cross, p2p_self=args.p2p_self, sd_upscale=args.sd_upscale,
        sd_upscale_upscaler=args.sd_upscale_upscaler, sd_upscale_overlap=args.sd_upscale_overlap,
        sd_upscale_strength=args.sd_upscale_strength, init_upscaler=args.init_upscaler, colorize=args.colorize,
        cache_interval=args.cache_interval, cache_branch=args.cache_branch,
        token_merging_ratio=args.token_merging, cache_threshold=args.cache_threshold,
        directions=[parse_direction(text, args.prompt) for text in args.direction],
        controls=[{**unit, "guidance_start": args.control_start, "guidance_end": args.control_end,
                   "control_mode": args.control_mode, "resize_mode": args.control_resize_mode,
                   **({"effective_region_mask": args.control_region} if args.control_region else {})}
                  for unit in args.control],
    )


def _control_arg(text: str) -> dict[str, Any]:
    """TYPE:IMAGE[:MODEL][:WEIGHT] -> a control unit."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected TYPE:IMAGE[:MODEL][:WEIGHT], got {text!r}")
    unit: dict[str, Any] = {"module": parts[0], "image": parts[1]}
    rest = parts[2:]
    if rest:
        try:
            unit["weight"] = float(rest[-1])
            rest = rest[:-1]
        except ValueError:
            pass
    if len(rest) > 1:
        raise argparse.ArgumentTypeError(f"expected TYPE:IMAGE[:MODEL][:WEIGHT], got {text!r}")
    if rest and rest[0]:
        unit["model"] = rest[0]
    return unit


def cmd_preprocess(args: argparse.Namespace) -> int:
    from sfumato.control import preprocessors
    from sfumato.output import check_output
    from sfumato.pipelines.images import load_image

    if args.output.suffix.lower() != ".png":
        raise InvalidRequest(f"output {args.output} must be a .png file")
    check_output(args.output)
    mapped = preprocessors.run(args.name, load_image(str(args.image), "image"), args.resolution, args.threshold_a,
                               args.threshold_b)
    try:
        mapped.save(args.output)
    except OSError as exc:
        from sfumato.output import write_error

        raise write_error(args.output, exc) from None
    print(args.output)
    return 0


class _Bar:
    """A tqdm bar whose total grows as passes are scheduled (first pass, hires pass)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="step", file=sys.stderr, disable=None)  # None: off when not a terminal

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _save_images(result, paths: list[Path]) -> list[dict[str, Any]]:
    from sfumato.models.home import sha256
    from sfumato.output import save_generated

    model_sha = sha256(Path(result.request.model))
    saved = []
    for item, path in zip(result.images, paths):
        save_generated(item, path, model_sha)
        saved.append({"path": str(path), "seed": item.seed, "subseed": item.subseed, "infotext": item.infotext,
                      "nsfw": item.nsfw})
    for reason in result.blocked:
        print(f"sfumato: {reason}", file=sys.stderr)
    return saved


def cmd_generate(args: argparse.Namespace) -> int:
    engine = _engine(args)
    request = request_from_args(args)
    if args.dry_run:
        resolved = engine.resolve(request)
        print(json.dumps({**resolved.to_dict(), "schedule": engine.schedule(resolved)}, indent=2, sort_keys=True))
        return 0
    return generate_and_save(engine, request, args)


def generate_and_save(engine, request: GenerationRequest, args: argparse.Namespace) -> int:
    """Generate with a progress bar and write the PNGs (`--output` or the dated folder, checked before the work);
    print their paths, or JSON with `--json`."""
    from sfumato.output import check_output, check_writable, dated_output_paths, explicit_output_paths

    if args.output:  # a bad output path fails before the work, not after it
        check_output(args.output)
    else:
        check_writable(Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")))
    bar = _Bar()
    try:
        result = engine.generate(request, progress=bar)
    finally:
        bar.close()
    seeds = [item.seed for item in result.images]
    if args.output:
        paths = explicit_output_paths(args.output, seeds)
    else:
        paths = dated_output_paths(Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")), seeds)
    saved = _save_images(result, paths)
    if args.json:
        print(json.dumps({"images": saved, "request": result.request.to_dict(), "seconds": round(result.seconds, 3)},
                         indent=2))
    else:
        for entry in saved:
            print(entry["path"])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from sfumato.output import png_parameters, read_png

    parameters = png_parameters(args.image)
    if parameters is not None and not parameters[1]:  # A1111 text only (an upscaled image, another tool's PNG)
        print(json.dumps({"parameters": parameters[0], "request": None}, indent=2) if args.json else parameters[0])
        return 0
    record = read_png(args.image)
    if args.json:
        print(json.dumps({"parameters": record.parameters, "request": record.request.to_dict(),
                          "batch_index": record.batch_index, "model_sha256": record.model_sha256}, indent=2))
    else:
        print(record.parameters or "")
        print(f"\nsfumato request (image {record.batch_index} of its batch):")
        print(json.dumps(record.request.to_dict(), indent=2, sort_keys=True))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import dataclasses

    from sfumato.models.home import sha256
    from sfumato.output import check_output, read_png

    record = read_png(args.image)
    request = record.request
    if args.model:
        request = dataclasses.replace(request, model=args.model)
    check_output(args.output)
    engine = _engine(args)
    if record.model_sha256 and sha256(engine.model_path(request.model)) != record.model_sha256:
        print("sfumato: warning: the model's hash differs from the recorded one; the image will differ",
              file=sys.stderr)
    bar = _Bar()
    try:
        result = engine.generate(request, progress=bar)
    finally:
        bar.close()
    if record.batch_index >= len(result.images):
        raise InvalidRequest(f"{args.image}: recorded batch index {record.batch_index} is out of range")
    result.images = [result.images[record.batch_index]]
    print(_save_images(result, [args.output])[0]["path"])
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from sfumato.models.convert import convert

    print(convert(args.source, args.target, allow_pickle=args.allow_pickle, half=args.half, quant=args.quant,
                  add=args.add))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from sfumato.models.catalog import list_models
    from sfumato.models.home import home

    entries = list_models()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no models in {home() / 'models'} (put checkpoints in models/checkpoints, LoRAs in models/loras)")
    for e in entries:
        print(f"{e.kind:10s} {e.name:30s} {e.family:14s} {e.format:12s} {e.size_bytes / 2**20:9.1f} MiB  {e.sha256[:10]}")
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from sfumato.models.tiny import build_tiny, build_tiny_clip

    if args.family == "clip":
        print(build_tiny_clip(args.output))
        return 0
    print(build_tiny(args.family, args.output, inpainting=args.inpainting))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from sfumato.training.config import FIELDS, TrainConfig, load_toml

    values = load_toml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS and k != "method"})
    method = args.method
    missing = [k for k in ("data", "output") if not values.get(k)]
    if missing:
        raise InvalidRequest(f"`train {method}` needs --{' and --'.join(missing)}")
    config = TrainConfig(method="full" if method in ("vae", "vqgan") else method, **values)
    if method == "vqgan":
        from sfumato.training.vqgan import VQGANSettings, train_vqgan

        settings = VQGANSettings(args.codebook_size, args.disc_start, args.disc_weight, args.restart_every, args.holdout)
        print(train_vqgan(dataclasses.replace(config, model=None), settings, say=lambda m: print(m, file=sys.stderr)))
        return 0
    if method == "vae":
        from sfumato.training.vae import train_vae

        print(train_vae(dataclasses.replace(config, model=None), args.vae_config, args.kl_weight,
                        say=lambda m: print(m, file=sys.stderr)))
        return 0
    from sfumato.training.trainer import train

    result = train(config, say=lambda m: print(m, file=sys.stderr))
    if not result.main_process:
        return 0
    print(json.dumps({"output": str(result.output), "steps": result.steps, "final_loss": result.losses[-1] if result.losses else None,
                      "images_per_second": round(result.images_per_second, 2), "images": result.dataset_size, "processes": result.world_size,
                      "skipped": result.skipped, "dropped": result.dropped,
                      "cache": dataclasses.asdict(result.cache)}, indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sfumato.training.emoji_data import build_emoji_dataset

    bar = tqdm(unit="img", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    count = build_emoji_dataset(args.output, args.size, args.base_only, args.limit, progress)
    bar.close()
    print(f"{count} images in {args.output} (metadata.jsonl); Noto Color Emoji, Apache-2.0")
    return 0


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file / $SFUMATO_API_KEY_FILE, else --api-key / $SFUMATO_API_KEY."""
    if not args.api_key_file:
        return args.api_key or None
    try:
        key = Path(args.api_key_file).read_text().strip().splitlines()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the API key file {args.api_key_file}: {exc.strerror or exc}") from None
    if not key or not key[0].strip():
        raise InvalidRequest(f"the API key file {args.api_key_file} is empty")
    return key[0].strip()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sfumato.server.app import create_app
    from sfumato.server.settings import Limits, ServerSettings

    limits = Limits(max_side=args.max_side, max_pixels=args.max_side ** 2, max_steps=args.max_steps,
                    max_images=args.max_images, max_frames=args.max_frames, max_prompt_chars=args.max_prompt_chars,
                    max_upload_bytes=args.max_upload_mb * 2**20, max_body_bytes=args.max_body_mb * 2**20,
                    max_text_body_bytes=args.max_text_body_kb * 2**10)
    settings = ServerSettings(host=args.host, port=args.port, model=args.model, api_key=_api_key(args),
                              insecure_no_auth=args.insecure_no_auth, max_batch_size=args.max_batch_size,
                              batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size, data_dir=args.data_dir,
                              store=args.store, store_lease_s=args.store_lease,
                              cors_origins=tuple(args.cors_origin), allowed_hosts=tuple(args.allowed_host),
                              safety=args.safety,
                              safety_threshold=args.safety_threshold, safety_policy=args.safety_policy,
                              limits=limits, device=args.device, preview=args.preview,
                              compile=args.compile, memory=memory_from_args(args))
    if args.ray:
        from sfumato.scale import serve as ray_serve

        scale = ray_serve.ServeScale(args.replicas, ray_serve.parse_autoscale(args.autoscale) if args.autoscale
                                     else None, args.autoscale_target, args.gpus_per_replica, args.cpus_per_replica,
                                     args.ray)
        ray_serve.run_forever(settings, scale, lambda: print(
            f"sfumato serving on Ray Serve at http://{args.host}:{args.port} ({args.autoscale or args.replicas} "
            f"replicas{', API key required' if settings.api_key else ''})", file=sys.stderr, flush=True))
        return 0
    app = create_app(settings.check())
    print(f"sfumato serving {app.state.service.current_model or 'no model'} on http://{args.host}:{args.port} "
          f"(docs at /docs{', API key required' if settings.api_key else ''})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sfumato.cli_eval import cmd_eval as run

    return run(args)


def cmd_grid(args: argparse.Namespace) -> int:
    from sfumato.cli_eval import cmd_grid as run

    return run(args)


def cmd_image(args: argparse.Namespace) -> int:
    from sfumato import cli_image

    if args.command in cli_image.RECIPE_HELP:
        return cli_image.cmd_recipe(args)
    return {"upscale": cli_image.cmd_upscale, "upscalers": cli_image.cmd_upscalers}[args.command](args)


def cmd_tools(args: argparse.Namespace) -> int:
    from sfumato import cli_tools

    return {"merge": cli_tools.cmd_merge, "lora": cli_tools.cmd_lora, "portrait": cli_tools.cmd_portrait}[args.command](args)


def cmd_batch(args: argparse.Namespace) -> int:
    from sfumato.cli_batch import cmd_batch as run

    return run(args)


def cmd_animate(args: argparse.Namespace) -> int:
    from sfumato.cli_animate import cmd_animate as run

    return run(args)


COMMANDS = {"animate": cmd_animate, "batch": cmd_batch, "merge": cmd_tools, "lora": cmd_tools, "portrait": cmd_tools, "upscale": cmd_image, "upscalers": cmd_image, "colorize": cmd_image, "restore": cmd_image,
            "style": cmd_image, "serve": cmd_serve, "eval": cmd_eval, "grid": cmd_grid, "train": cmd_train, "data": cmd_data, "generate": cmd_generate, "info": cmd_info, "replay": cmd_replay, "convert": cmd_convert,
            "models": cmd_models, "make-tiny": cmd_make_tiny, "preprocess": cmd_preprocess}


def _quiet_libraries() -> None:
    """Library log lines and loading bars are noise on a terminal; our own bar reports progress."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr: exit 2 for bad input, 1 when the work failed,
    130 for Ctrl-C. `SFUMATO_DEBUG=1` adds the traceback of unexpected errors."""
    args = build_parser().parse_args(argv)
    try:
        if args.command not in ("info", "models"):
            _quiet_libraries()
        return COMMANDS[args.command](args)
    except SfumatoError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("sfumato: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        return _fail(f"this needs the Python package {exc.name!r}, which is not installed: "
                     f"pip install {_PIP_NAMES.get(exc.name or '', exc.name)}", EXIT_RUNTIME)
    except OSError as exc:  # full disk, permissions, unreadable files outside what the commands check up front
        from sfumato.output import write_error

        return _fail(str(write_error(Path(exc.filename or "a file"), exc)), EXIT_RUNTIME)
    except MemoryError:
        return _fail("out of memory: try a smaller size or batch, or --dtype float16", EXIT_RUNTIME)
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("SFUMATO_DEBUG"):
            import traceback

            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return _fail(f"internal error ({type(exc).__name__}: {first}); rerun with SFUMATO_DEBUG=1 for the "
                     "traceback and report it", EXIT_RUNTIME)


_PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "skimage": "scikit-image", "yaml": "pyyaml"}


def _fail(message: str, code: int) -> int:
    print(f"sfumato: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
