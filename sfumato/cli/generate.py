"""`sfumato generate`, `info`, `replay` and `preprocess`: one image request from flags, and PNGs read back."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfumato.cli.common import (add_runtime_args, Bar, add_safety_args, control_arg,
                                fast_settings, generate_and_save, lora_arg, make_engine, outpaint_arg, save_images)
from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest, parse_direction


def add_parsers(commands) -> None:
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
    gen.add_argument("--reference-image", metavar="IMG",
                     help="FLUX.1 Kontext: the image the prompt (an instruction) edits, fitted to the output size "
                          "(--init-image without --mask means the same on a Kontext model)")
    gen.add_argument("--image-cfg-scale", type=float, default=1.5,
                     help="InstructPix2Pix image guidance: how closely the edit keeps the input image")
    gen.add_argument("--mask-blur", type=int, default=4)
    gen.add_argument("--inpaint-fill", choices=["original", "fill"], default="original",
                     help="masked content img2img starts from: the original pixels, or filled from the surroundings")
    gen.add_argument("--outpaint", type=outpaint_arg, default={}, help="e.g. left=64,down=32")
    gen.add_argument("--tile", action="store_true", help="seamless tiling")
    gen.add_argument("--lora", action="append", type=lora_arg, default=[], metavar="PATH[:WEIGHT]")
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
    gen.add_argument("--control", action="append", type=control_arg, default=[], metavar="TYPE:IMAGE[:MODEL][:WEIGHT]",
                     help="a ControlNet / T2I-Adapter unit (repeatable): TYPE is the preprocessor (canny, scribble, "
                          "softedge, lineart, tile, color, none, ...); without MODEL the embedded model uses its "
                          "shipped sfumato-emoji-canny; reference_only, reference_adain and reference_adain+attn "
                          "take no model (the image steers the UNet's own attention)")
    gen.add_argument("--style-fidelity", type=float, metavar="F",
                     help="reference units: how hard CFG pushes toward the reference, 0..1 (default 0.5)")
    gen.add_argument("--consistent", type=float, nargs="?", const=1.0, default=0.0, metavar="STRENGTH",
                     help="style-aligned batch: every image shares self-attention with the batch's first one, keeping "
                          "its style and subject while the prompts differ (strength 0..2, 1 without a value)")
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
    add_runtime_args(gen)

    gen.set_defaults(run=cmd_generate)

    info = commands.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=cmd_info)

    replay = commands.add_parser("replay", help="regenerate a PNG exactly from its metadata")
    replay.add_argument("image", type=Path)
    replay.add_argument("--output", "-o", type=Path, required=True)
    replay.add_argument("--model", help="use this model instead of the recorded path")
    replay.add_argument("--device")
    replay.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="precision (auto: the one recorded in the PNG)")
    add_safety_args(replay)
    replay.set_defaults(run=cmd_replay)

    pre = commands.add_parser("preprocess", help="show a control map: run a preprocessor (annotator) on an image")
    pre.add_argument("name", help="canny, scribble, threshold, softedge, lineart, shuffle, tile, blur, color, invert, "
                                  "inpaint, none")
    pre.add_argument("image", type=Path)
    pre.add_argument("--output", "-o", type=Path, required=True)
    pre.add_argument("--resolution", type=int, help="scale the short side to this first (default: as given)")
    pre.add_argument("--threshold-a", type=float)
    pre.add_argument("--threshold-b", type=float)
    pre.set_defaults(run=cmd_preprocess)


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, **fast_settings(args), vae=args.vae,
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
                   **({"effective_region_mask": args.control_region} if args.control_region else {}),
                   **({"threshold_a": args.style_fidelity} if args.style_fidelity is not None
                      and unit["module"].startswith("reference") else {})}
                  for unit in args.control],
        consistent=args.consistent, reference_image=args.reference_image,
    )


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


def cmd_generate(args: argparse.Namespace) -> int:
    engine = make_engine(args)
    request = request_from_args(args)
    if args.dry_run:
        resolved = engine.resolve(request)
        print(json.dumps({**resolved.to_dict(), "schedule": engine.schedule(resolved)}, indent=2, sort_keys=True))
        return 0
    return generate_and_save(engine, request, args)


def cmd_info(args: argparse.Namespace) -> int:
    from sfumato.comfy.png import comfy_prompt
    from sfumato.output import png_parameters, read_png

    parameters = png_parameters(args.image)
    workflow = comfy_prompt(args.image) if args.image.is_file() else None
    if workflow is not None and (parameters is None or not parameters[1]):  # a ComfyUI PNG
        if args.json:
            print(json.dumps({"parameters": parameters[0] if parameters else None, "request": None,
                              "comfy_prompt": workflow}, indent=2))
        else:
            nodes = ", ".join(f"{k}: {v.get('class_type')}" for k, v in workflow.items() if isinstance(v, dict))
            print(f"ComfyUI workflow (API format; `sfumato replay` or `sfumato comfy run` runs it): {nodes}")
        return 0
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

    from sfumato.comfy.png import comfy_prompt
    from sfumato.models.home import sha256
    from sfumato.output import check_output, png_parameters, read_png

    parameters = png_parameters(args.image) if args.image.is_file() else None
    workflow = comfy_prompt(args.image) if args.image.is_file() else None
    if workflow is not None and (parameters is None or not parameters[1]):  # a ComfyUI PNG: run its workflow
        return _replay_comfy(args, workflow)
    record = read_png(args.image)
    request = record.request
    if args.model:
        request = dataclasses.replace(request, model=args.model)
    check_output(args.output)
    if getattr(args, "dtype", "auto") == "auto" and record.precision:
        args.dtype = record.precision  # the precision that made the image, unless --dtype says otherwise
    engine = make_engine(args)
    if record.model_sha256 and sha256(engine.model_path(request.model)) != record.model_sha256:
        print("sfumato: warning: the model's hash differs from the recorded one; the image will differ",
              file=sys.stderr)
    bar = Bar()
    try:
        result = engine.generate(request, progress=bar)
    finally:
        bar.close()
    if record.sheet:  # a view sheet: the views again, side by side
        from sfumato.output import save_png
        from sfumato.views import sheet

        save_png(sheet([item.image for item in result.images], record.sheet), args.output, record.parameters,
                 {"request": result.request.to_dict(), "batch_index": 0, "model_sha256": record.model_sha256,
                  "sheet": record.sheet})
        print(args.output)
        return 0
    if record.batch_index >= len(result.images):
        raise InvalidRequest(f"{args.image}: recorded batch index {record.batch_index} is out of range")
    result.images = [result.images[record.batch_index]]
    print(save_images(result, [args.output])[0]["path"])
    return 0


def _replay_comfy(args: argparse.Namespace, workflow: dict) -> int:
    """A ComfyUI PNG's API-format workflow through the executor; the first output image is written."""
    from sfumato.comfy.executor import Executor
    from sfumato.comfy.names import Names
    from sfumato.comfy.png import save_output
    from sfumato.output import check_output

    check_output(args.output)
    engine = make_engine(args)
    bar = Bar()
    try:
        outputs, _ = Executor(engine, Names.from_home(args.image.parent, allow_paths=True)).run(workflow, progress=bar)
    finally:
        bar.close()
    first = next((o for o in outputs if o.images.images), None)
    if first is None:
        raise InvalidRequest(f"{args.image}: its workflow made no image")
    save_output(args.output, first.images.images[0], first.images, 0, {"prompt": workflow})
    print(args.output)
    return 0
