"""Command-line adapter for `sfumato views`: one subject from several angles as one consistent batch, written as
a labelled sheet plus one replayable PNG per view."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from sfumato.cli.common import Bar, add_runtime_args, add_sampling_args, control_arg, make_engine
from sfumato.requests import GenerationRequest

EXAMPLES = """examples:
  sfumato views "a red robot"
  sfumato views "a knight in silver armour" --views front,three-quarter,side,back --reference knight.png
  sfumato views "a red robot" --consistent 0 -o plain/     (the same batch without sharing, to compare)"""


def add_parsers(commands) -> None:
    from sfumato.views import DEFAULT_VIEWS, VIEWS

    views = commands.add_parser("views", help="a character / multi-view sheet: one subject from named angles, kept "
                                              "the same by shared attention (and an optional reference image)",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    views.add_argument("prompt", help="the subject, e.g. 'a red robot'")
    views.add_argument("--views", default=",".join(DEFAULT_VIEWS),
                       help=f"comma-separated, in order (default {','.join(DEFAULT_VIEWS)}); known: {', '.join(VIEWS)}")
    views.add_argument("--reference", metavar="IMAGE", help="keep this image's subject (a reference_only unit)")
    views.add_argument("--reference-weight", type=float, default=1.0, help="the reference unit's weight (0..2)")
    views.add_argument("--consistent", type=float, default=1.0, metavar="STRENGTH",
                       help="shared attention with the first view, 0..2 (0: a plain batch)")
    views.add_argument("--measure", action="store_true",
                       help="also draw the batch without sharing and print both consistency scores")
    gen = views.add_argument_group("generation settings")
    add_sampling_args(gen)
    gen.add_argument("--vae")
    gen.add_argument("--negative", "--negative-prompt", dest="negative_prompt", default="")
    gen.add_argument("--control", action="append", type=control_arg, default=[], metavar="TYPE:IMAGE[:MODEL][:WEIGHT]",
                     help="a control unit on every view")
    views.add_argument("--output", "-o", type=Path,
                       help="a folder (default: outputs/views/<time>/): sheet.png and one PNG per view")
    views.add_argument("--json", action="store_true")
    add_runtime_args(views)
    views.set_defaults(run=cmd_views)


def cmd_views(args: argparse.Namespace) -> int:
    from sfumato.models.home import sha256
    from sfumato.output import check_writable, save_generated, save_png
    from sfumato.views import consistency, parse_views, sheet, views_request

    names = parse_views(args.views)
    base = GenerationRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, model=args.model,
                             vae=args.vae, steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler,
                             seed=args.seed, width=args.width, height=args.height, loras=list(args.lora),
                             controls=list(args.control))
    request = views_request(base, names, args.reference, args.consistent, args.reference_weight).validate()
    folder = args.output or Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")) / "views" / \
        time.strftime("%Y%m%d-%H%M%S")
    check_writable(folder)
    engine = make_engine(args)
    bar = Bar()
    try:
        result = engine.generate(request, progress=bar)
        plain = None
        if args.measure:
            plain = engine.generate(dataclasses.replace(result.request, consistent=0.0, controls=[
                u for u in result.request.controls if not str(u.get("module", "")).startswith("reference")]),
                progress=bar)
    finally:
        bar.close()
    model_sha = sha256(Path(result.request.model))
    paths = []
    for name, item in zip(names, result.images):
        paths.append(str(save_generated(item, folder / f"{name}.png", model_sha)))
    images = [item.image for item in result.images]
    record = {"request": result.request.to_dict(), "batch_index": 0, "model_sha256": model_sha, "sheet": names}
    sheet_path = save_png(sheet(images, names), folder / "sheet.png",
                          "\n\n".join(f"{name}: {item.infotext}" for name, item in zip(names, result.images)), record)
    report = {"sheet": str(sheet_path), "views": dict(zip(names, paths)), "seed": result.request.seed}
    if plain is not None:
        report["consistency"] = {"shared": round(consistency(images), 4),
                                 "plain": round(consistency([item.image for item in plain.images]), 4)}
        save_png(sheet([item.image for item in plain.images], names), folder / "sheet-plain.png", None, None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(sheet_path)
        if plain is not None:
            print(f"consistency (mean pairwise feature cosine): shared {report['consistency']['shared']}, "
                  f"plain {report['consistency']['plain']}")
    return 0
