"""Command-line adapter for model tools: `sfumato merge` (checkpoint merger), `sfumato lora merge | bake |
extract` and `sfumato portrait train | generate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfumato.cli.common import Bar, lora_arg, Parser
from sfumato.errors import InvalidRequest


def add_parsers(commands) -> None:
    from sfumato.models.merge_presets import MODES, PRESETS

    merge = commands.add_parser("merge", help="merge checkpoints (A1111's Checkpoint Merger, block-weighted too)")
    merge.add_argument("a", type=Path, help="model A (single .safetensors or diffusers folder)")
    merge.add_argument("b", type=Path, help="model B")
    merge.add_argument("c", type=Path, nargs="?", help="model C (add-difference: A + (B - C) * alpha)")
    merge.add_argument("--output", "-o", type=Path, required=True, help=".safetensors file or folder, as the inputs")
    merge.add_argument("--mode", choices=MODES, help="default: weighted-sum, or add-difference when C is given")
    merge.add_argument("--alpha", type=float, default=0.5, help="B's share (weighted sum) or the difference's "
                                                                "multiplier; outside the UNet blocks with block weights")
    merge.add_argument("--block-weights", help="comma-separated alpha per UNet block: IN00..,M00,OUT.. (25 values "
                                               "for SD 1.x/2.x, 19 for SDXL)")
    merge.add_argument("--block-preset", choices=sorted(PRESETS), help="a merge-block-weighted preset")
    merge.add_argument("--text-encoder", choices=["merge", "A", "B"], default="merge")
    merge.add_argument("--vae", default="merge", help="merge, A, B, or a VAE file/name to bake in")
    merge.add_argument("--half", action="store_true", help="save float16")

    lora = commands.add_parser("lora", help="LoRA tools: merge several, bake into a checkpoint, extract from a "
                                            "fine-tune")
    tools = lora.add_subparsers(dest="lora_command", required=True, parser_class=Parser)
    lmerge = tools.add_parser("merge", help="merge LoRAs into one (weighted; exact, or re-factorised to --rank)")
    lmerge.add_argument("loras", nargs="+", type=lora_arg, metavar="PATH[:WEIGHT]")
    lmerge.add_argument("--output", "-o", type=Path, required=True)
    lmerge.add_argument("--rank", type=int, help="re-factorise each layer to this rank by SVD (default: stack, exact)")
    bake = tools.add_parser("bake", help="fuse LoRAs into a checkpoint (written in the model's form)")
    bake.add_argument("model", type=Path)
    bake.add_argument("--lora", action="append", type=lora_arg, default=[], metavar="PATH[:WEIGHT]", required=True)
    bake.add_argument("--output", "-o", type=Path, required=True, help=".safetensors file or folder")
    bake.add_argument("--half", action="store_true")
    extract = tools.add_parser("extract", help="extract a LoRA from a fine-tuned model and its base (SVD)")
    extract.add_argument("tuned", type=Path)
    extract.add_argument("base", type=Path)
    extract.add_argument("--output", "-o", type=Path, required=True)
    extract.add_argument("--rank", type=int, default=32)
    extract.add_argument("--conv-rank", type=int, default=0, help="also 3x3 convolutions of the ResNet blocks "
                                                                 "(LoCon) at this rank")
    extract.add_argument("--no-text-encoder", dest="text_encoder", action="store_false")

    portrait = commands.add_parser("portrait", help="my photos -> portraits: a subject LoRA, then the subject put "
                                                    "into templates (EasyPhoto/FaceChain-style)")
    steps = portrait.add_subparsers(dest="portrait_command", required=True, parser_class=Parser)
    ptrain = steps.add_parser("train", help="face crops + captions, a staged subject LoRA, the best stages merged")
    ptrain.add_argument("photos", type=Path, help="a folder of photos of the subject")
    ptrain.add_argument("--output", "-o", type=Path, required=True, help="the run folder")
    ptrain.add_argument("--model", type=Path, help="base model (default: the embedded one)")
    ptrain.add_argument("--subject", default="sks person", help="the words that name the subject in prompts")
    for name, kind, default in (("steps", int, 400), ("stages", int, 4), ("keep", int, 2), ("rank", int, 8),
                                ("learning-rate", float, 1e-4), ("batch-size", int, 4), ("resolution", int, None),
                                ("samples", int, 4), ("seed", int, 0)):
        ptrain.add_argument(f"--{name}", type=kind, default=default)
    ptrain.add_argument("--extractor", default="open-nsfw", help="features for identity similarity (any `eval` "
                                                                 "extractor, e.g. classifier:PATH)")
    ptrain.add_argument("--face-detector", type=Path, help="a YuNet face detector .onnx (else centre crops)")
    pgen = steps.add_parser("generate", help="inpaint the subject into a template under ControlNet, then polish")
    pgen.add_argument("run_dir", metavar="RUN", type=Path)
    pgen.add_argument("--template", type=Path, help="the picture to put the subject into")
    pgen.add_argument("--style", help="a style prompt (makes the template with the base model when none is given)")
    pgen.add_argument("--mask", type=Path, help="white = the face region (else --face-detector finds it)")
    pgen.add_argument("--face-detector", type=Path)
    pgen.add_argument("--output", "-o", type=Path, required=True, help="the final PNG")
    pgen.add_argument("--seed", type=int, default=0)
    pgen.add_argument("--steps", type=int)
    pgen.add_argument("--strength", type=float, default=0.8, help="inpainting strength of the face region")
    pgen.add_argument("--control", choices=["canny", "tile", "none"], default="canny")
    pgen.add_argument("--control-model", help="ControlNet name/path (the embedded model has its own canny one)")
    pgen.add_argument("--control-weight", type=float, default=0.5)
    pgen.add_argument("--polish-strength", type=float, default=0.25, help="the whole-image pass (0: none)")
    pgen.add_argument("--lora-weight", type=float, default=1.0)
    pgen.add_argument("--inpaint-fill", choices=["fill", "original"], default="fill",
                      help="without fusion: the face region starts from its surroundings (fill) or the template's")
    pgen.add_argument("--no-fuse", dest="fuse", action="store_false",
                      help="do not paste the subject drawn alone into the region first (EasyPhoto's face fusion)")
    merge.set_defaults(run=cmd_merge)
    lora.set_defaults(run=cmd_lora)
    portrait.set_defaults(run=cmd_portrait)


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InvalidRequest(f"--block-weights must be comma-separated numbers, got {text!r}") from None


def cmd_merge(args: argparse.Namespace) -> int:
    from sfumato.models.merge import MergeRecipe, merge

    if args.block_weights and args.block_preset:
        raise InvalidRequest("give --block-weights or --block-preset, not both")
    mode = args.mode or ("add-difference" if args.c else "weighted-sum")
    recipe = MergeRecipe(mode=mode, alpha=args.alpha, block_weights=_weights(args.block_weights),
                         block_preset=args.block_preset, text_encoder=args.text_encoder, vae=args.vae, half=args.half)
    bar = Bar()
    try:
        out = merge(args.a, args.b, args.output, recipe, c=args.c, progress=bar)
    finally:
        bar.close()
    print(out)
    return 0


def cmd_lora(args: argparse.Namespace) -> int:
    from sfumato.models import lora_tools

    if args.lora_command == "merge":
        print(lora_tools.merge_loras(args.loras, args.output, rank=args.rank))
    elif args.lora_command == "bake":
        print(lora_tools.bake_loras(args.model, args.lora, args.output, half=args.half))
    else:
        bar = Bar()
        try:
            out = lora_tools.extract_lora(args.tuned, args.base, args.output, rank=args.rank,
                                          conv_rank=args.conv_rank, text_encoder=args.text_encoder, progress=bar)
        finally:
            bar.close()
        print(out)
    return 0


def cmd_portrait(args: argparse.Namespace) -> int:
    from sfumato.portrait.faces import Detector
    from sfumato.portrait.workflow import PortraitSettings, generate_portrait, train_portrait

    detector = Detector(args.face_detector) if args.face_detector else None
    if args.portrait_command == "train":
        from sfumato.models.embedded import embedded_model

        model = args.model or embedded_model()
        if model is None:
            raise InvalidRequest("no --model and no embedded model installed")
        settings = PortraitSettings(subject=args.subject, steps=args.steps, stages=args.stages, keep=args.keep,
                                    rank=args.rank, learning_rate=args.learning_rate, batch_size=args.batch_size,
                                    resolution=args.resolution, extractor=args.extractor, samples=args.samples,
                                    seed=args.seed)
        train_portrait(args.photos, args.output, Path(model), settings, detector)
        print(args.output / "subject.safetensors")
        return 0
    result = generate_portrait(args.run_dir, template=args.template, style=args.style, mask=args.mask, detector=detector,
                               seed=args.seed, strength=args.strength, control=args.control,
                               control_model=args.control_model, control_weight=args.control_weight,
                               polish_strength=args.polish_strength, lora_weight=args.lora_weight,
                               work=args.output.parent / (args.output.stem + "-steps"), steps=args.steps,
                               inpaint_fill=args.inpaint_fill, fuse=args.fuse)
    from sfumato.output import save_generated

    save_generated(result.item, args.output, None)  # the steps (template, mask, inpainted) lie beside it
    print(args.output)
    return 0
