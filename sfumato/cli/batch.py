"""Command-line adapter for `sfumato batch`: a jobs file of generation requests -> PNGs + a Parquet manifest,
in this process or on Ray Data (`--ray`), resumable by running the same command again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfumato.cli.common import add_compile_arg, add_memory_args, add_safety_args, memory_from_args

EXAMPLES = """examples:
  sfumato batch prompts.jsonl --out runs/apples            # {"prompt": "a red apple", "seed": 1} per line
  sfumato batch prompts.csv --out runs/x --ray --replicas 2  # the same plan on a local Ray instance
  sfumato batch jobs.parquet --out runs/y --ray ray://head:10001 --gpus-per-replica 0.5
kill it and run the same command again: rows already made are skipped (seeds are fixed in OUT/plan.jsonl)."""


def add_parsers(commands) -> None:
    batch = commands.add_parser("batch", help="bulk generation from a JSONL/CSV/Parquet jobs file (resumable; Ray)",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("jobs", type=Path, help="one generation request per row (native request fields; "
                                               "a prompt column is enough; an id column names the images)")
    batch.add_argument("--out", type=Path, required=True, help="output folder: images/, plan.jsonl, manifest.parquet")
    batch.add_argument("-m", "--model", help="model of rows that name none (default: the embedded model)")
    batch.add_argument("--seed", type=int, help="seed of the plan: rows with seed -1 draw theirs from it "
                                                "(default: random, recorded in OUT/plan.json)")
    batch.add_argument("--batch-size", type=int, default=4, help="rows per engine call; compatible rows of one "
                                                                 "call generate as one batch (default 4)")
    batch.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run on Ray Data: a local instance, or the cluster at ADDRESS (ray://host:10001)")
    batch.add_argument("--replicas", type=int, default=1, help="Ray: engine actors (one model each)")
    batch.add_argument("--gpus-per-replica", type=float, default=0.0, help="Ray: GPUs per actor (fractions share)")
    batch.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray: CPUs per actor")
    batch.add_argument("--device")
    batch.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="precision (auto: float16 on CUDA; bfloat16 on CPUs with AMX/AVX512-BF16 for large models, else float32)")
    batch.add_argument("--json", action="store_true", help="print the report as JSON")
    add_compile_arg(batch)
    add_memory_args(batch)
    add_safety_args(batch)
    batch.set_defaults(run=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sfumato.safety.classifier import SafetySettings
    from sfumato.scale.batch import BatchSettings, run_batch

    safety = SafetySettings(args.safety, args.safety_threshold, args.safety_policy)
    settings = BatchSettings(device=args.device, dtype=args.dtype, safety=safety, compile=args.compile, memory=memory_from_args(args))
    bar = tqdm(unit="row", file=sys.stderr, disable=None, desc="batch")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = run_batch(args.jobs, args.out, model=args.model, seed=args.seed, batch_size=args.batch_size,
                           settings=settings, ray=args.ray, replicas=args.replicas,
                           gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
                           progress=progress)
    finally:
        bar.close()
    summary = {"rows": report.rows, "skipped": report.skipped, "made": report.made, "images": report.images,
               "failed": report.failed, "seconds": round(report.seconds, 2),
               "rows_per_second": round(report.made / report.seconds, 3) if report.seconds else None,
               "manifest": str(report.manifest)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{report.made} rows made ({report.images} images), {report.skipped} already done, "
              f"{report.failed} failed; manifest {report.manifest}")
    if report.failed:
        print(f"sfumato: {report.failed} rows failed (see the error column of {report.manifest}); run the same "
              "command again to retry them", file=sys.stderr)
        return 1
    return 0
