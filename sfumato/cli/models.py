"""`sfumato convert`, `models` and `make-tiny`: model files in, model files out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path



def add_parsers(commands) -> None:
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
    convert.set_defaults(run=cmd_convert)

    models = commands.add_parser("models", help="list models, LoRAs and control models in $SFUMATO_HOME/models")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=cmd_models)

    families = commands.add_parser("families", help="the model families and what works with each")
    families.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    families.add_argument("--json", action="store_true")
    families.set_defaults(run=cmd_families)

    tiny = commands.add_parser("make-tiny", help="write a tiny random-weight model (for tests and demos)")
    from sfumato.models.families import TINY_FAMILIES

    tiny.add_argument("family", choices=[*TINY_FAMILIES, "clip"], help="a model family, or clip (a CLIPModel)")
    tiny.add_argument("output", type=Path)
    tiny.add_argument("--inpainting", action="store_true")
    tiny.set_defaults(run=cmd_make_tiny)


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


def cmd_families(args: argparse.Namespace) -> int:
    from sfumato.models.families import FAMILIES
    from sfumato.pipelines.support import COLUMNS, capabilities, markdown_table

    if args.markdown:
        print(markdown_table())
        return 0
    rows = [capabilities(family) for family in FAMILIES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['family']}  ({row['diffusers pipeline']}; {row['defaults']})")
        for column in COLUMNS[2:-1]:
            print(f"    {column:16s} {row[column]}")
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from sfumato.models.tiny import build_tiny, build_tiny_clip

    if args.family == "clip":
        print(build_tiny_clip(args.output))
        return 0
    print(build_tiny(args.family, args.output, inpainting=args.inpainting))
    return 0
