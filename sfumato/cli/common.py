"""What the commands share: the parser class, argument types, the engine from flags, progress bars, saving."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest

EXIT_USAGE = 2
EXIT_RUNTIME = 1


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def lora_arg(text: str) -> tuple[str, float]:
    name, sep, weight = text.rpartition(":")
    if sep:
        try:
            return name, float(weight)
        except ValueError:
            pass
    return text, 1.0


def outpaint_arg(text: str) -> dict[str, int]:
    pads: dict[str, int] = {}
    for part in text.split(","):
        side, sep, pixels = part.strip().partition("=")
        if not sep or not pixels.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected SIDE=PIXELS[,SIDE=PIXELS] (sides: left,right,up,down), got {text!r}")
        pads[side.strip()] = int(pixels)
    return pads


def add_safety_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--safety", choices=["off", "blur", "block"], default=os.environ.get("SFUMATO_SAFETY", "blur"),
                        help="image check: blur (default) or block images the NSFW classifier flags, or off")
    parser.add_argument("--safety-threshold", type=float, default=0.8, help="NSFW score that triggers the check")
    parser.add_argument("--safety-policy", default=os.environ.get("SFUMATO_SAFETY_POLICY"),
                        help="prompt policy TOML (default: the packaged one; 'off' disables it)")


def make_engine(args: argparse.Namespace):
    from sfumato.engine import Engine
    from sfumato.safety.classifier import SafetySettings

    safety = SafetySettings(args.safety, args.safety_threshold, args.safety_policy)
    return Engine(device=getattr(args, "device", None), dtype=getattr(args, "dtype", None), safety=safety,
                  compile=getattr(args, "compile", None), memory=memory_from_args(args))


def add_memory_args(parser: argparse.ArgumentParser) -> None:
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


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the UNet/transformer and VAE decoder (same image, faster after a one-time "
                             "compile cached under $SFUMATO_HOME/cache/compile; reduce-overhead = CUDA graphs)")


def fast_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--fast: an embedded model (the default, or one named: `--model sfumato-emoji`) at its few-step settings
    (other models: --preset or an LCM-LoRA)."""
    if not getattr(args, "fast", False):
        return {"model": args.model, "preset": args.preset, "steps": args.steps}
    from sfumato.models.embedded import embedded_model, fast_settings as embedded_fast

    model = embedded_model(args.model)
    if (args.model and model is None) or args.preset:
        raise InvalidRequest("--fast is an embedded model's few-step setting; for other models use --preset "
                             "lcm|turbo|lightning|hyper|tcd or an LCM-LoRA")
    if model is None:
        raise InvalidRequest("--fast needs the embedded model, which this install does not carry")
    fast = embedded_fast(model)
    return {"model": str(model), "preset": fast["preset"], "steps": args.steps or fast["steps"]}


def add_sampling_args(group) -> None:
    """The settings every generating command shares: --model/-m, --steps, --cfg-scale, --sampler, --seed,
    --width/-W, --height/-H and --lora (a command adds its own around them)."""
    group.add_argument("--model", "-m")
    group.add_argument("--steps", type=int)
    group.add_argument("--cfg-scale", type=float)
    group.add_argument("--sampler")
    group.add_argument("--seed", type=int, default=-1)
    group.add_argument("--width", "-W", type=int)
    group.add_argument("--height", "-H", type=int)
    group.add_argument("--lora", action="append", type=lora_arg, default=[], metavar="PATH[:WEIGHT]")


def control_arg(text: str) -> dict[str, Any]:
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


class Bar:
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


def save_images(result, paths: list[Path]) -> list[dict[str, Any]]:
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


def generate_and_save(engine, request: GenerationRequest, args: argparse.Namespace) -> int:
    """Generate with a progress bar and write the PNGs (`--output` or the dated folder, checked before the work);
    print their paths, or JSON with `--json`."""
    from sfumato.output import check_output, check_writable, dated_output_paths, explicit_output_paths

    if args.output:  # a bad output path fails before the work, not after it
        check_output(args.output)
    else:
        check_writable(Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")))
    bar = Bar()
    try:
        result = engine.generate(request, progress=bar)
    finally:
        bar.close()
    seeds = [item.seed for item in result.images]
    if args.output:
        paths = explicit_output_paths(args.output, seeds)
    else:
        paths = dated_output_paths(Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")), seeds)
    saved = save_images(result, paths)
    if args.json:
        print(json.dumps({"images": saved, "request": result.request.to_dict(), "seconds": round(result.seconds, 3)},
                         indent=2))
    else:
        for entry in saved:
            print(entry["path"])
    return 0


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """Where and how a generation runs: device, precision, torch.compile, the memory modes and the safety check."""
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="precision (auto: float16 on CUDA; bfloat16 on CPUs with AMX/AVX512-BF16 for large models, else float32)")
    add_compile_arg(parser)
    add_memory_args(parser)
    add_safety_args(parser)
