"""Scale-out on this machine, side by side in one run: `sfumato batch` in-process vs on Ray Data, and the server
in-process vs on Ray Serve.

    python benchmarks/scale.py [--rows 96] [--steps 8] [--requests 96] [--clients 16] [--skip-serve]

1. batch: the same plan (embedded model, distinct prompts, fixed seeds) made four ways in this process's Ray instance
   (started once, so its start-up is not counted; each mode pays its own model load): in-process (torch on all
   cores), Ray 1 replica with all cores (the Ray overhead: target <= 10 %), Ray 1 replica with 1 core and Ray
   2 replicas with 1 core each (the scaling with cores: near-linear is 2x).
2. serve: 16 concurrent OpenAI-API clients against `sfumato serve`, then `sfumato serve --ray --replicas 1`
   (all cores) and `--replicas 2` (one core each); images/s of each.
Prints ratios; any failed row or request stops it before a ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from live_server import start_server  # noqa: E402
from server_load import PROMPTS  # noqa: E402
from server_load import _mean_batch  # noqa: E402
from server_load import _run as run  # noqa: E402  (N OpenAI-API clients, distinct prompts and seeds)



def bench_batch(rows: int, steps: int, root: Path) -> dict[str, float]:
    import ray

    from sfumato.scale.batch import run_batch

    jobs = root / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "steps": steps}) + "\n"
                            for i in range(rows)))
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    modes = {"in-process": {}, "ray 1 replica x all cores": {"ray": "local", "replicas": 1, "cpus_per_replica": cores},
             "ray 1 replica x 1 core": {"ray": "local", "replicas": 1, "cpus_per_replica": 1},
             f"ray {cores} replicas x 1 core": {"ray": "local", "replicas": cores, "cpus_per_replica": 1}}
    out = {}
    for name, options in modes.items():
        report = run_batch(jobs, root / name.replace(" ", "_"), seed=1, batch_size=8, **options)
        if report.failed or report.made != rows:
            raise SystemExit(f"{name}: {report.failed} rows failed, {report.made} of {rows} made: no ratio reported")
        out[name] = _steady(report.manifest, 8 * options.get("replicas", 1))
        print(f"batch {name:28s}: {rows} rows in {report.seconds:6.1f} s end to end (model loads included); "
              f"steady {out[name]:.2f} rows/s", flush=True)
    ray.shutdown()
    return out


def _steady(manifest: Path, first: int) -> float:
    """Rows/s once every worker has made its first batch (start-up and model loads excluded)."""
    import pyarrow.parquet as pq

    times = sorted(pq.read_table(manifest, columns=["finished"]).column("finished").to_pylist())
    return (len(times) - first) / (times[-1] - times[first - 1])


def bench_serve(requests: int, clients: int, root: Path, extra: tuple[str, ...] = ()) -> dict[str, float]:
    cores = os.cpu_count() or 1
    modes = {"in-process": [], "ray 1 replica x all cores": ["--ray", "--replicas", "1", "--cpus-per-replica",
                                                           str(cores)],
             f"ray {cores} replicas x 1 core": ["--ray", "--replicas", str(cores), "--cpus-per-replica", "1"]}
    out = {}
    for name, flags in modes.items():
        data = root / ("serve_" + name.replace(" ", "_"))
        shutil.rmtree(data, ignore_errors=True)
        process, base = start_server("--data-dir", str(data), "--safety", "off", "--queue-size", "4096",
                                     "--max-batch-size", "16", *flags, *extra, timeout_s=180)
        try:
            run(base, 2, 4, process)  # warm up
            measured = run(base, clients, requests, process)
            seconds, errors = measured["seconds"], measured["errors"]
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        if errors:
            raise SystemExit(f"serve {name}: {errors} requests failed: no ratio reported")
        out[name] = requests / seconds
        print(f"serve {name:28s}: {requests} requests, {clients} clients, {seconds:6.1f} s = {out[name]:.2f} "
              f"images/s; mean batch {_mean_batch(str(data)):.1f} jobs; p50 latency {measured['p50']:.2f} s",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--batch-wait-ms", type=float, default=30.0, help="the servers' --batch-wait-ms")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="sfumato-scale-") as folder:
        root = Path(folder)
        batch = {} if args.skip_batch else bench_batch(args.rows, args.steps, root)
        if batch:
            print(f"Ray overhead at one replica (same cores): "
                  f"{1 - batch['ray 1 replica x all cores'] / batch['in-process']:+.1%} of in-process rows/s (target <= 10 %)")
            print(f"scaling {cores} replicas / 1 replica (1 core each): "
                  f"{batch[f'ray {cores} replicas x 1 core'] / batch['ray 1 replica x 1 core']:.2f}x on {cores} cores")
        if not args.skip_serve:
            serve = bench_serve(args.requests, args.clients, root, ("--batch-wait-ms", str(args.batch_wait_ms)))
            print(f"Ray Serve 1 replica / in-process server: {serve['ray 1 replica x all cores'] / serve['in-process']:.2f}")
            print(f"Ray Serve {cores} replicas / in-process server: "
                  f"{serve[f'ray {cores} replicas x 1 core'] / serve['in-process']:.2f}")


if __name__ == "__main__":
    main()
