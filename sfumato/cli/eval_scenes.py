"""Command-line adapter for `sfumato eval detector` and `sfumato eval compositional` (the world of `data scenes`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfumato.cli.common import add_safety_args, make_engine

DEFAULT_DETECTOR = Path("scene-detector.safetensors")


def add_parsers(metrics) -> None:
    det = metrics.add_parser("detector", help="train the scene detector on `sfumato data scenes` renders")
    det.add_argument("data", type=Path, help="a `sfumato data scenes` folder")
    det.add_argument("--output", "-o", type=Path, default=DEFAULT_DETECTOR)
    det.add_argument("--steps", type=int, default=3000)
    det.add_argument("--batch-size", type=int, default=64)
    det.add_argument("--limit", type=int, default=30000, help="at most this many 64x64 renders in memory")
    det.add_argument("--check", type=Path, help="a second scenes folder (another seed) to report accuracy on")
    det.add_argument("--init", type=Path, help="continue training this detector")
    det.add_argument("--width", type=int, default=32, help="channels of the first block (a new detector)")
    comp = metrics.add_parser("compositional", help="GenEval-style categories on held-out prompts, diversity, grid")
    comp.add_argument("--model", "-m")
    comp.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    comp.add_argument("--per-category", type=int, default=24)
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--diversity-prompts", type=int, default=12)
    comp.add_argument("--fast", action="store_true", help="the embedded model's few-step setting")
    comp.add_argument("--steps", type=int)
    comp.add_argument("--cfg-scale", type=float)
    comp.add_argument("--sampler")
    comp.add_argument("--out", type=Path, required=True, help="folder for report.json, table.md and grid.png")
    add_safety_args(comp)


def run(args: argparse.Namespace) -> int:
    if args.metric == "detector":
        return _detector(args)
    return _compositional(args)


def _detector(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sfumato.evaluation.scene_detector import accuracy, load_records, save_detector, train_detector

    bar = tqdm(total=args.steps, unit="step", file=sys.stderr, disable=None)

    def progress(step: int, total: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    from sfumato.evaluation.scene_detector import load_detector

    init = load_detector(args.init) if args.init else None
    model = train_detector(args.data, args.steps, args.batch_size, limit=args.limit, progress=progress, init=init,
                           width=args.width)
    bar.close()
    save_detector(model, args.output)
    record = {"detector": str(args.output)}
    if args.check:
        record["accuracy"] = accuracy(model, args.check, load_records(args.check, square_only=False)[:2000])
    print(json.dumps(record, indent=2))
    return 0


def _compositional(args: argparse.Namespace) -> int:
    from sfumato.cli.common import Bar
    from sfumato.evaluation.compositional import CATEGORIES, evaluate
    from sfumato.evaluation.scene_detector import load_detector
    from sfumato.training.report import image_grid

    detector = load_detector(args.detector)
    settings = {k: v for k, v in (("steps", args.steps), ("cfg_scale", args.cfg_scale), ("sampler", args.sampler))
                if v is not None}
    if args.fast:  # the model's few-step setting (its sfumato.json's `fast`)
        from sfumato.engine import default_model
        from sfumato.models.embedded import fast_settings

        fast = fast_settings(Path(args.model or default_model() or "."))
        settings = {**settings, "preset": fast["preset"], "steps": args.steps or fast["steps"]}
    engine = make_engine(args)
    bar = Bar()
    report = evaluate(engine, detector, args.model, args.per_category, args.seed, args.diversity_prompts,
                      settings=settings, progress=bar)
    bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    images, sets = report.pop("images"), report.pop("diversity sets")
    per = args.per_category
    image_grid([i.resize((64, 64)) for i in images], columns=per).save(args.out / "grid.png")
    if sets:
        image_grid([i.resize((64, 64)) for _, s in sets for i in s], columns=len(sets[0][1])).save(
            args.out / "diversity.png")
    report["settings"] = {"model": args.model or "default", **settings}
    (args.out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    rows = ["| category | score |", "|---|---|"]
    rows += [f"| {c} | {report['categories'][c]:.2f} |" for c in (*CATEGORIES, "overall") if c in report["categories"]]
    d = report["diversity"]
    rows.append(f"| diversity: distinct of {d['seeds']} seeds (mean) | {d['mean distinct']:.1f} |")
    rows.append(f"| diversity: mean pairwise RMSE | {d['mean pairwise rmse']:.3f} |")
    table = "\n".join(rows)
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0
