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
from sfumato.requests import HIRES_UPSCALERS, GenerationRequest

EXIT_USAGE = 2


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


def _engine(args: argparse.Namespace, model: str | None = None):
    from sfumato.engine import Engine
    from sfumato.safety.classifier import SafetySettings

    safety = SafetySettings(args.safety, args.safety_threshold, args.safety_policy)
    return Engine(model, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None), safety=safety)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfumato", description="Generate, edit, train, evaluate and serve latent-diffusion models.")
    parser.add_argument("--version", action="version", version=f"sfumato {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="txt2img / img2img / inpaint / outpaint / hires fix")
    gen.add_argument("prompt", help="prompt text; A1111 (emphasis:1.2), BREAK, <lora:name:w> and --ar/--no/... flags")
    gen.add_argument("--model", "-m", help="diffusers folder, .safetensors file, or a name in $SFUMATO_HOME/models")
    gen.add_argument("--negative", "--negative-prompt", dest="negative_prompt", default="")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--cfg-scale", type=float)
    gen.add_argument("--sampler")
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
    gen.add_argument("--mask-blur", type=int, default=4)
    gen.add_argument("--outpaint", type=_outpaint_arg, default={}, help="e.g. left=64,down=32")
    gen.add_argument("--tile", action="store_true", help="seamless tiling")
    gen.add_argument("--lora", action="append", type=_lora_arg, default=[], metavar="PATH[:WEIGHT]")
    gen.add_argument("--hires-scale", type=float, default=1.0)
    gen.add_argument("--hires-strength", type=float, default=0.55)
    gen.add_argument("--hires-steps", type=int)
    gen.add_argument("--hires-upscaler", choices=HIRES_UPSCALERS, default="latent")
    gen.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                     help="override the model's prediction type (for a mis-detected single file)")
    gen.add_argument("--output", "-o", type=Path, help="PNG file or folder (default: outputs/<date>/)")
    gen.add_argument("--json", action="store_true", help="print the result as JSON")
    gen.add_argument("--dry-run", action="store_true", help="print the fully resolved request and exit")
    gen.add_argument("--device")
    gen.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
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

    convert = commands.add_parser("convert", help="pickle -> safetensors, single file <-> diffusers folder")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path, help=".safetensors file or folder")
    convert.add_argument("--allow-pickle", action="store_true", help="load a pickle with torch.load(weights_only=True)")
    convert.add_argument("--half", action="store_true", help="store float16 weights")

    models = commands.add_parser("models", help="list models and LoRAs in $SFUMATO_HOME/models")
    models.add_argument("--json", action="store_true")

    tiny = commands.add_parser("make-tiny", help="write a tiny random-weight model (for tests and demos)")
    tiny.add_argument("family", choices=["sd1", "sd2", "sdxl", "sdxl-refiner", "ldm", "sd3", "flux", "clip"], help="a model family, or clip (a CLIPModel)")
    tiny.add_argument("output", type=Path)
    tiny.add_argument("--inpainting", action="store_true")
    _add_train_parser(commands)
    _add_eval_parsers(commands)
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

    train = commands.add_parser("train", help="train: scratch, full, lora, dreambooth, oft, textual-inversion, vae")
    train.add_argument("method", choices=[*METHODS, "vae"])
    train.add_argument("--config", type=Path, help="TOML file of training settings (data only)")
    train.add_argument("--vae-config", help="`train vae`: AutoencoderKL config.json overriding the small default")
    train.add_argument("--kl-weight", type=float, default=1e-6, help="`train vae`: KL term weight")
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


def _add_eval_parsers(commands) -> None:
    """`sfumato eval METRIC ...` and `sfumato grid`."""
    ev = commands.add_parser("eval", help="measure images and models: fid, kid, is, clip-score, psnr, ssim, steps ...")
    metrics = ev.add_subparsers(dest="metric", required=True, parser_class=_Parser)
    extractor_help = "open-nsfw (default, offline) or inception:PATH.safetensors (pytorch-fid weights)"
    for name, helptext in (("fid", "Fréchet distance of features"), ("kid", "kernel distance (polynomial MMD²)"),
                           ("is", "Inception Score (needs class logits)"), ("clip-score", "CLIP score of captions"),
                           ("adherence", "top-k retrieval of each image's prompt among labelled references")):
        sub = metrics.add_parser(name, help=helptext)
        sub.add_argument("--fake", type=Path, required=True, help="folder of generated images")
        sub.add_argument("--real", type=Path, required=name in ("fid", "kid", "adherence"),
                         help="folder of reference images")
        sub.add_argument("--extractor", default="open-nsfw", help=extractor_help)
        sub.add_argument("--save", type=Path, help="append the result to DIR/metrics.jsonl (for `eval report`)")
        sub.add_argument("--json", action="store_true")
        if name == "kid":
            sub.add_argument("--subsets", type=int, default=100)
            sub.add_argument("--subset-size", type=int, default=1000)
        if name == "is":
            sub.add_argument("--splits", type=int, default=10)
        if name == "clip-score":
            sub.add_argument("--clip-model", type=Path, required=True, help="local transformers CLIPModel folder")
            sub.add_argument("--captions", type=Path, help="one caption per image (default: PNG prompts/metadata)")
    for name in ("psnr", "ssim"):
        sub = metrics.add_parser(name, help=f"{name.upper()} of two images, or two folders matched by file name")
        sub.add_argument("a", type=Path)
        sub.add_argument("b", type=Path)
        sub.add_argument("--save", type=Path)
        sub.add_argument("--json", action="store_true")
    sub = metrics.add_parser("tssim", help="temporal SSIM: mean SSIM of consecutive frames (GIF/WebP or folder)")
    sub.add_argument("frames", type=Path)
    sub.add_argument("--save", type=Path)
    sub.add_argument("--json", action="store_true")
    steps = metrics.add_parser("steps", help="quality vs steps and seconds per sampler -> CSV + PNG plots")
    steps.add_argument("--model", "-m")
    steps.add_argument("--prompts", type=Path, required=True, help="one prompt per line")
    steps.add_argument("--samplers", default="Euler a,DPM++ 2M Karras,DDIM,UniPC", help="comma-separated")
    steps.add_argument("--steps", default="4,8,12,20,30,50", help="comma-separated step counts")
    steps.add_argument("--seed", type=int, default=0)
    steps.add_argument("--cfg-scale", type=float)
    steps.add_argument("--reference-sampler", default="DPM++ 2M")
    steps.add_argument("--reference-steps", type=int, default=100)
    steps.add_argument("--real", type=Path, help="reference images (FID; adherence when labelled by metadata.jsonl)")
    steps.add_argument("--extractor", default="open-nsfw", help=extractor_help)
    steps.add_argument("--clip-model", type=Path)
    steps.add_argument("--out", type=Path, required=True, help="output folder (CSV, plots, sweep.json)")
    report = metrics.add_parser("report", help="write DIR/report.md from an evaluation folder")
    report.add_argument("folder", type=Path)
    report.add_argument("--metric", dest="pick", help="metric that picks the recommended setting (default: top1, fid, ...)")

    grid = commands.add_parser("grid", help="A1111-style X/Y/Z grid: any request field on any axis")
    grid.add_argument("prompt")
    grid.add_argument("--x", required=True, metavar="FIELD=V1,V2", help='e.g. "sampler=Euler a,DDIM"')
    grid.add_argument("--y", metavar="FIELD=V1,V2", help='e.g. "steps=10,20,30"')
    grid.add_argument("--z", metavar="FIELD=V1,V2")
    grid.add_argument("--model", "-m")
    grid.add_argument("--negative", "--negative-prompt", dest="negative_prompt", default="")
    for flag, kind in (("--steps", int), ("--cfg-scale", float), ("--sampler", str), ("--width", int),
                       ("--height", int)):
        grid.add_argument(flag, type=kind)
    grid.add_argument("--seed", type=int, default=-1)
    grid.add_argument("--min-cell", type=int, default=128, help="enlarge smaller cells to this many pixels")
    grid.add_argument("--output", "-o", type=Path, required=True)
    _add_safety_args(grid)


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="HTTP server: OpenAI Images, A1111 /sdapi/v1 and native jobs APIs")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs --api-key)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--model", "-m", help="default model (else $SFUMATO_MODEL or the embedded one)")
    serve.add_argument("--api-key", default=os.environ.get("SFUMATO_API_KEY"), help="require Authorization: Bearer KEY")
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback bind without a key")
    serve.add_argument("--max-batch-size", type=int, default=8, help="images per batch across jobs (1 = no batching)")
    serve.add_argument("--queue-size", type=int, default=256, help="unfinished jobs before answering 429")
    serve.add_argument("--data-dir", type=Path, default=Path("sfumato-server"), help="job database and images")
    serve.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    serve.add_argument("--max-side", type=int, default=2048)
    serve.add_argument("--max-steps", type=int, default=150)
    serve.add_argument("--max-images", type=int, default=16, help="images per request")
    serve.add_argument("--max-prompt-chars", type=int, default=4000)
    serve.add_argument("--max-upload-mb", type=int, default=20)
    serve.add_argument("--device")
    serve.add_argument("--safety", choices=["off", "blur", "block"], default="blur")
    serve.add_argument("--safety-threshold", type=float, default=0.8)
    serve.add_argument("--safety-policy", default=os.environ.get("SFUMATO_SAFETY_POLICY"))


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, model=args.model, sampler=args.sampler,
        steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed, subseed=args.subseed,
        subseed_strength=args.subseed_strength, width=args.width, height=args.height, batch_size=args.batch_size,
        batch_count=args.batch_count, clip_skip=args.clip_skip, init_image=args.init_image, mask=args.mask,
        mask_blur=args.mask_blur, strength=args.strength, outpaint=args.outpaint, tile=args.tile,
        hires_scale=args.hires_scale, hires_strength=args.hires_strength, hires_steps=args.hires_steps,
        hires_upscaler=args.hires_upscaler, loras=list(args.lora), prediction_type=args.prediction_type,
    )


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
    from sfumato.output import dated_output_paths, explicit_output_paths

    engine = _engine(args)
    request = request_from_args(args)
    if args.dry_run:
        print(json.dumps(engine.resolve(request).to_dict(), indent=2, sort_keys=True))
        return 0
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
    from sfumato.output import read_png

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
    from sfumato.output import read_png

    record = read_png(args.image)
    request = record.request
    if args.model:
        request = dataclasses.replace(request, model=args.model)
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

    print(convert(args.source, args.target, allow_pickle=args.allow_pickle, half=args.half))
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
    config = TrainConfig(method="full" if method == "vae" else method, **values)
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


def _print_metric(args: argparse.Namespace, record: dict, text: str) -> None:
    if getattr(args, "save", None):
        from sfumato.evaluation.report import save_metric

        save_metric(args.save, record)
    print(json.dumps(record, indent=2) if getattr(args, "json", False) else text)


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from sfumato.evaluation import images as ev_images
    from sfumato.evaluation import metrics

    if args.metric == "report":
        from sfumato.evaluation.report import write_report

        print(write_report(args.folder, args.pick))
        return 0
    if args.metric == "steps":
        return _eval_steps(args)
    if args.metric in ("psnr", "ssim"):
        pairs = ev_images.load_pairs(args.a, args.b)
        fn = metrics.psnr if args.metric == "psnr" else metrics.ssim
        values = {name: fn(a, b) for name, a, b in pairs}
        mean = float(np.mean(list(values.values())))
        record = {"metric": args.metric, "value": mean, "pairs": len(values), "a": str(args.a), "b": str(args.b)}
        unit = " dB" if args.metric == "psnr" else ""
        _print_metric(args, record | ({"per_image": values} if len(values) > 1 else {}),
                      f"{args.metric.upper()}: {mean:.4f}{unit} (mean of {len(values)} pair(s))")
        return 0
    if args.metric == "tssim":
        mean, values = metrics.temporal_ssim(ev_images.load_frames(args.frames))
        _print_metric(args, {"metric": "temporal_ssim", "value": mean, "frames": len(values) + 1,
                             "per_pair": values, "source": str(args.frames)},
                      f"temporal SSIM: {mean:.4f} over {len(values) + 1} frames")
        return 0
    fake = ev_images.load_folder(args.fake, "--fake folder")
    record: dict[str, Any] = {"metric": args.metric, "fake": str(args.fake), "fake_images": len(fake)}
    if args.metric == "clip-score":
        from sfumato.evaluation.clip_score import ClipScorer

        scorer = ClipScorer(args.clip_model)
        value = float(scorer.scores(fake, ev_images.image_captions(args.fake, args.captions)).mean())
        _print_metric(args, record | {"value": value, "model": scorer.name},
                      f"CLIP score ({scorer.name}): {value:.3f} over {len(fake)} images")
        return 0
    from sfumato.evaluation.features import load_extractor

    extractor = load_extractor(args.extractor)
    record["extractor"] = extractor.name
    bar = tqdm(total=len(fake), unit="img", desc="features", file=sys.stderr, disable=None)
    if args.metric == "is":
        mean, std = metrics.inception_score(extractor.logits(fake, bar.update), args.splits)
        bar.close()
        _print_metric(args, record | {"value": mean, "std": std},
                      f"IS ({extractor.name}): {mean:.3f} ± {std:.3f} over {len(fake)} images")
        return 0
    real = ev_images.load_folder(args.real, "--real folder")
    record |= {"real": str(args.real), "real_images": len(real)}
    if args.metric == "adherence":
        from sfumato.evaluation.sweep import labelled_reference

        real, labels = labelled_reference(args.real)
        prompts = ev_images.image_captions(args.fake)
        index = {label: i for i, label in enumerate(labels) if label}
        missing = [p for p in prompts if p not in index]
        if missing:
            raise InvalidRequest(f"{len(missing)} prompts have no labelled reference image (e.g. {missing[0]!r}); "
                                 "label --real images by name/text in its metadata.jsonl")
        bar.total = len(fake) + len(real)
        ranks = metrics.retrieval_ranks(extractor.features(fake, bar.update), extractor.features(real, bar.update),
                                        [index[p] for p in prompts])
        bar.close()
        top1, top5 = metrics.top_k_accuracy(ranks, 1), metrics.top_k_accuracy(ranks, 5)
        _print_metric(args, record | {"value": top1, "top1": top1, "top5": top5},
                      f"adherence ({extractor.name}): top-1 {top1:.1%}, top-5 {top5:.1%} over {len(fake)} images "
                      f"against {len(real)} references")
        return 0
    bar.total = len(fake) + len(real)
    fake_f, real_f = extractor.features(fake, bar.update), extractor.features(real, bar.update)
    bar.close()
    if args.metric == "fid":
        value = metrics.frechet_distance(fake_f, real_f)
        _print_metric(args, record | {"value": value},
                      f"FID ({extractor.name}): {value:.3f}  [{len(real)} real, {len(fake)} fake]")
    else:
        mean, std = metrics.kernel_inception_distance(fake_f, real_f, args.subsets, args.subset_size)
        _print_metric(args, record | {"value": mean, "std": std},
                      f"KID ({extractor.name}): {mean:.5f} ± {std:.5f}  [{len(real)} real, {len(fake)} fake]")
    return 0


def _eval_steps(args: argparse.Namespace) -> int:
    from sfumato.engine import Engine
    from sfumato.evaluation.report import write_report
    from sfumato.evaluation.sweep import SweepConfig, read_prompts, run_sweep

    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise InvalidRequest(f"--steps must be comma-separated integers, got {args.steps!r}") from None
    config = SweepConfig(model=args.model, prompts=read_prompts(args.prompts),
                         samplers=[s.strip() for s in args.samplers.split(",") if s.strip()], steps=steps,
                         seed=args.seed, cfg_scale=args.cfg_scale, reference_sampler=args.reference_sampler,
                         reference_steps=args.reference_steps, real=str(args.real) if args.real else None,
                         extractor=args.extractor, clip_model=str(args.clip_model) if args.clip_model else None)
    rows = run_sweep(Engine(), config, args.out, say=lambda m: print(m, file=sys.stderr))
    print(f"{len(rows)} rows -> {args.out / 'steps.csv'}; report: {write_report(args.out)}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from sfumato.evaluation.grid import parse_axis, xyz_grid

    axes = [parse_axis(args.x), parse_axis(args.y) if args.y else None, parse_axis(args.z) if args.z else None]
    if axes[1] is None and axes[2] is not None:
        axes = [axes[0], axes[2], None]
    base = GenerationRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, model=args.model,
                             sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed,
                             width=args.width, height=args.height)
    bar = _Bar()
    try:
        image, results = xyz_grid(_engine(args), base, axes, args.min_cell, bar)
    finally:
        bar.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"{args.output} ({len(results)} cells, seed {results[0].images[0].seed})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sfumato.server.app import create_app
    from sfumato.server.settings import Limits, ServerSettings

    limits = Limits(max_side=args.max_side, max_pixels=args.max_side ** 2, max_steps=args.max_steps,
                    max_images=args.max_images, max_prompt_chars=args.max_prompt_chars,
                    max_upload_bytes=args.max_upload_mb * 2**20)
    settings = ServerSettings(host=args.host, port=args.port, model=args.model, api_key=args.api_key,
                              insecure_no_auth=args.insecure_no_auth, max_batch_size=args.max_batch_size,
                              queue_size=args.queue_size, data_dir=args.data_dir,
                              cors_origins=tuple(args.cors_origin), safety=args.safety,
                              safety_threshold=args.safety_threshold, safety_policy=args.safety_policy,
                              limits=limits, device=args.device)
    app = create_app(settings.check())
    print(f"sfumato serving {app.state.service.current_model or 'no model'} on http://{args.host}:{args.port} "
          f"(docs at /docs{', API key required' if args.api_key else ''})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS = {"serve": cmd_serve, "eval": cmd_eval, "grid": cmd_grid, "train": cmd_train, "data": cmd_data, "generate": cmd_generate, "info": cmd_info, "replay": cmd_replay, "convert": cmd_convert,
            "models": cmd_models, "make-tiny": cmd_make_tiny}


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
    args = build_parser().parse_args(argv)
    if args.command not in ("info", "models"):
        _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except SfumatoError as exc:
        print(f"sfumato: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sfumato: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
