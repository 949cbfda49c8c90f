"""Command-line adapter for `sfumato eval ...` and `sfumato grid`: flags in, numbers and files out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sfumato.cli.common import add_safety_args, Bar, make_engine, Parser
from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest


def add_parsers(commands) -> None:
    """`sfumato eval METRIC ...` and `sfumato grid`."""
    ev = commands.add_parser("eval", help="measure images and models: fid, kid, is, clip-score, psnr, ssim, steps ...")
    metrics = ev.add_subparsers(dest="metric", required=True, parser_class=Parser)
    extractor_help = "open-nsfw (default, offline) or inception:PATH.safetensors (pytorch-fid weights)"
    for name, helptext in (("fid", "Fréchet distance of features"), ("kid", "kernel distance (polynomial MMD²)"),
                           ("is", "Inception Score (needs class logits)"), ("clip-score", "CLIP score of captions"),
                           ("adherence", "top-k retrieval of each image's prompt among labelled references")):
        sub = metrics.add_parser(name, help=helptext)
        sub.add_argument("--fake", type=Path, required=True,
                         help="folder of generated images, or a `sfumato batch` manifest (OUT/manifest.parquet or OUT)")
        sub.add_argument("--real", type=Path, required=name in ("fid", "kid", "adherence"),
                         help="folder of reference images")
        sub.add_argument("--extractor", default="open-nsfw", help=extractor_help)
        sub.add_argument("--save", type=Path, help="append the result to DIR/metrics.jsonl (for `eval report`)")
        sub.add_argument("--json", action="store_true")
        sub.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                         help="extract features on Ray Data (a local instance, or the cluster at ADDRESS)")
        sub.add_argument("--replicas", type=int, default=2, help="Ray: extractor actors")
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
    sub = metrics.add_parser("tssim", help="temporal SSIM (mean and worst consecutive pair) and flicker of a video, GIF/WebP or folder")
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
    from sfumato.cli import eval_scenes

    eval_scenes.add_parsers(metrics)
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
    add_safety_args(grid)
    ev.set_defaults(run=cmd_eval)
    grid.set_defaults(run=cmd_grid)


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

    if args.metric in ("detector", "compositional"):
        from sfumato.cli import eval_scenes

        return eval_scenes.run(args)
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
        from sfumato.animation.video import read_frames

        report = metrics.temporal_report(read_frames(args.frames))
        _print_metric(args, {"metric": "temporal_ssim", "value": report["temporal_ssim"], **report,
                             "source": str(args.frames)},
                      f"temporal SSIM: {report['temporal_ssim']:.4f} over {report['frames']} frames (worst pair "
                      f"{report['worst_pair']}: {report['temporal_ssim_worst']:.4f}), flicker {report['flicker']:.4f}")
        return 0
    from sfumato.scale.evaluate import image_set

    fake, fake_prompts = image_set(args.fake)
    record: dict[str, Any] = {"metric": args.metric, "fake": str(args.fake), "fake_images": len(fake)}
    if args.replicas < 1:
        raise InvalidRequest("--replicas must be at least 1")
    if args.metric == "clip-score":
        from sfumato.evaluation.clip_score import ClipScorer

        captions = (ev_images.image_captions(args.fake, args.captions) if args.captions or fake_prompts is None
                    else fake_prompts)
        if len(captions) != len(fake):
            raise InvalidRequest(f"{len(captions)} captions for {len(fake)} images")
        if args.ray:
            from sfumato.scale.evaluate import ray_values

            scores, name = ray_values(str(args.clip_model), "clip", fake, args.ray, args.replicas, 32, captions), \
                f"clip:{args.clip_model.name}"
        else:
            scorer = ClipScorer(args.clip_model)
            scores, name = scorer.scores(_load(fake), captions), scorer.name
        value = float(np.mean(scores))
        _print_metric(args, record | {"value": value, "model": name},
                      f"CLIP score ({name}): {value:.3f} over {len(fake)} images")
        return 0
    from sfumato.evaluation.features import load_extractor

    extractor = load_extractor(args.extractor)
    record["extractor"] = extractor.name
    bar = tqdm(total=len(fake), unit="img", desc="features", file=sys.stderr, disable=None)

    def values(paths, kind: str = "features"):
        """Features (or logits) of images: on Ray Data with --ray, else here; the same batches either way."""
        if args.ray:
            from sfumato.scale.evaluate import ray_values

            return ray_values(args.extractor, kind, paths, args.ray, args.replicas, extractor.batch_size,
                              progress=bar.update)
        return getattr(extractor, kind)(_load(paths), bar.update)

    if args.metric == "is":
        mean, std = metrics.inception_score(values(fake, "logits"), args.splits)
        bar.close()
        _print_metric(args, record | {"value": mean, "std": std},
                      f"IS ({extractor.name}): {mean:.3f} ± {std:.3f} over {len(fake)} images")
        return 0
    from sfumato.evaluation.sweep import labelled_reference_paths

    real, labels = labelled_reference_paths(args.real)  # metadata.jsonl rows (subfolders allowed), else the folder's images
    record |= {"real": str(args.real), "real_images": len(real)}
    if args.metric == "adherence":
        prompts = fake_prompts if fake_prompts is not None else ev_images.image_captions(args.fake)
        index = {label: i for i, label in enumerate(labels) if label}
        missing = [p for p in prompts if p not in index]
        if missing:
            raise InvalidRequest(f"{len(missing)} prompts have no labelled reference image (e.g. {missing[0]!r}); "
                                 "label --real images by name/text in its metadata.jsonl")
        bar.total = len(fake) + len(real)
        ranks = metrics.retrieval_ranks(values(fake), values(real), [index[p] for p in prompts])
        bar.close()
        top1, top5 = metrics.top_k_accuracy(ranks, 1), metrics.top_k_accuracy(ranks, 5)
        _print_metric(args, record | {"value": top1, "top1": top1, "top5": top5},
                      f"adherence ({extractor.name}): top-1 {top1:.1%}, top-5 {top5:.1%} over {len(fake)} images "
                      f"against {len(real)} references")
        return 0
    bar.total = len(fake) + len(real)
    fake_f, real_f = values(fake), values(real)
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


def _load(paths):
    from sfumato.scale.evaluate import load

    return load(paths)


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
    bar = Bar()
    try:
        image, results = xyz_grid(make_engine(args), base, axes, args.min_cell, bar)
    finally:
        bar.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"{args.output} ({len(results)} cells, seed {results[0].images[0].seed})")
    return 0
