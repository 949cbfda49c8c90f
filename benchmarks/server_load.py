"""Load test of `sfumato serve` on loopback: dynamic batching vs none, latency, errors and memory growth.

    python benchmarks/server_load.py [--model M] [--clients 16] [--requests 1000] [--unbatched-requests 96]

Starts the server twice as a subprocess (`--max-batch-size 16`, then `--max-batch-size 1`), with
the embedded model by default, and lets 16 concurrent clients send OpenAI `images/generations`
requests (distinct prompts and seeds) until the request count is reached. Prints throughput with
batching vs without as a ratio (target >= 3x), p50/p95 latency, errors (target 0) and the server's
RSS after 100 and after all requests of the batched run (target <= 10 % growth), and the batched server's
throughput against `Engine.generate_many` at the same batch size in this process (target >= 0.90). Any failed
request stops it before a ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time

import httpx
import psutil
from live_server import start_server

PROMPTS = ["red apple", "grinning face", "rocket", "dog face", "pizza", "sun", "red heart", "ghost", "fire",
           "snowman", "rainbow", "cat face", "thumbs up", "banana", "star", "t-rex"]


def _start(model: str | None, batch: int, data_dir: str) -> tuple[subprocess.Popen, str]:
    flags = ["--max-batch-size", str(batch), "--data-dir", data_dir, "--safety", "off", "--queue-size", "4096"]
    return start_server(*flags, *(["--model", model] if model else []), timeout_s=60)


def _run(base: str, clients: int, total: int, process: subprocess.Popen, rss_at: int = 100) -> dict:
    latencies: list[float] = []
    errors = [0]
    counter = [0]
    rss_early: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    if counter[0] >= total:
                        return
                    n = counter[0]
                    counter[0] += 1
                started = time.perf_counter()
                try:
                    r = http.post(base + "/v1/images/generations",
                                  json={"prompt": PROMPTS[n % len(PROMPTS)], "seed": n, "response_format": "b64_json"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - started)
                    errors[0] += 0 if ok else 1
                    if len(latencies) == rss_at:
                        rss_early.append(psutil.Process(process.pid).memory_info().rss / 2**20)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "seconds": seconds, "throughput": len(latencies) / seconds,
            "p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "errors": errors[0], "rss_early": rss_early[0] if rss_early else None,
            "rss_end": psutil.Process(process.pid).memory_info().rss / 2**20}


def _engine_throughput(model: str | None, batch: int, images: int) -> float:
    """Images/s of `Engine.generate_many` in this process, on the server's requests (distinct prompts and seeds)."""
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    engine = Engine(model)
    requests = [GenerationRequest(PROMPTS[n % len(PROMPTS)], seed=n) for n in range(images)]
    engine.generate_many(requests[:batch])  # warm up: model load, prompt cache
    started = time.perf_counter()
    for first in range(0, images, batch):
        engine.generate_many(requests[first:first + batch])
    return images / (time.perf_counter() - started)


def _mean_batch(data_dir: str) -> float:
    """Jobs per batch, averaged over the completed jobs of a run (from the server's own job store)."""
    with sqlite3.connect(os.path.join(data_dir, "jobs.sqlite3")) as db:
        sizes = [json.loads(r)["batch_jobs"] for (r,) in db.execute("SELECT result FROM jobs WHERE status='completed'")]
    return statistics.mean(sizes) if sizes else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--unbatched-requests", type=int, default=96)
    parser.add_argument("--data-dir", default="/tmp/sfumato-server-bench")
    args = parser.parse_args()
    results = {}
    for label, batch, total in (("batched", 16, args.requests), ("unbatched", 1, args.unbatched_requests)):
        shutil.rmtree(os.path.join(args.data_dir, label), ignore_errors=True)  # a fresh job store per run
        process, base = _start(args.model, batch, os.path.join(args.data_dir, label))
        try:
            _run(base, 2, 4, process)  # warm up: model load, first batches
            results[label] = _run(base, args.clients, total, process)
        finally:
            process.terminate()
            process.wait(30)
        r = results[label]
        print(f"{label:9s} (--max-batch-size {batch:2d}): {r['requests']} requests in {r['seconds']:.1f} s = "
              f"{r['throughput']:.2f} req/s; p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s; errors {r['errors']}; "
              f"mean batch {_mean_batch(os.path.join(args.data_dir, label)):.1f} jobs")
    b, u = results["batched"], results["unbatched"]
    failed = b["errors"] + u["errors"]
    if failed:  # a ratio over failed requests means nothing
        raise SystemExit(f"{failed} requests failed: no ratio reported")
    engine = _engine_throughput(args.model, 16, max(32, args.requests // 8))
    print(f"engine alone, generate_many({16}): {engine:.2f} images/s")
    print(f"throughput ratio batched / unbatched: {b['throughput'] / u['throughput']:.2f}x (target >= 3x)")
    print(f"server batched / engine generate_many: {b['throughput'] / engine:.2f} (target >= 0.90)")
    if b["rss_early"]:
        growth = (b["rss_end"] - b["rss_early"]) / b["rss_early"]
        print(f"server RSS after 100 requests {b['rss_early']:.0f} MiB, after {b['requests']}: {b['rss_end']:.0f} MiB "
              f"({growth:+.1%}; target <= +10%)")


if __name__ == "__main__":
    main()
