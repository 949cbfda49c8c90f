"""Load test of `sfumato serve` on loopback: dynamic batching vs none, latency, errors and memory growth.

    python benchmarks/server_load.py [--model M] [--clients 16] [--requests 1000] [--unbatched-requests 96]

Starts the server twice as a subprocess (`--max-batch-size 16`, then `--max-batch-size 1`), with
the embedded model by default, and lets 16 concurrent clients send OpenAI `images/generations`
requests (distinct prompts and seeds) until the request count is reached. Prints throughput with
batching vs without as a ratio (target >= 3x), p50/p95 latency, errors (target 0) and the server's
RSS after 100 and after all requests of the batched run (target <= 10 % growth), and the batched server's
throughput against `Engine.generate_many` at the same batch size in this process (target >= 0.90): the two take
turns (`--rounds`, the same number of images each turn), so both see the same drift of a shared machine's speed
(consecutive runs here differed by up to 1.7x). Any failed request stops it before a ratio is printed.
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


class Load:
    """Closed-loop clients: each sends an OpenAI `images/generations` request, waits for it, sends the next."""

    def __init__(self, base: str, process: subprocess.Popen, clients: int, rss_at: int = 100):
        self.base, self.process, self.clients, self.rss_at = base, process, clients, rss_at
        self.latencies: list[float] = []
        self.errors = 0
        self.seconds = 0.0
        self.rss_early: float | None = None
        self.client_cpu = self.server_cpu_s = 0.0  # CPU seconds of the clients and of the server while they ran
        self._sent = 0
        # made once: an httpx.Client builds an SSL context (reads the CA bundle, ~50 ms of CPU here), which inside the
        # timed turn delayed each turn's first batch
        self._http = [httpx.Client(timeout=600) for _ in range(clients)]

    def run(self, count: int) -> None:
        """Send `count` more requests (numbered on from the last run: distinct prompts and seeds)."""
        lock = threading.Lock()
        last = self._sent + count

        def client(http: httpx.Client) -> None:
            while True:
                with lock:
                    if self._sent >= last:
                        return
                    n = self._sent
                    self._sent += 1
                started = time.perf_counter()
                try:
                    r = http.post(self.base + "/v1/images/generations",
                                  json={"prompt": PROMPTS[n % len(PROMPTS)], "seed": n,
                                        "response_format": "b64_json"})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    self.latencies.append(time.perf_counter() - started)
                    self.errors += 0 if ok else 1
                    if len(self.latencies) == self.rss_at:
                        self.rss_early = self.rss()

        threads = [threading.Thread(target=client, args=(http,)) for http in self._http]
        started, cpu, server_cpu = time.perf_counter(), time.process_time(), self.server_cpu()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.seconds += time.perf_counter() - started
        self.client_cpu += time.process_time() - cpu  # this process runs only the clients meanwhile
        self.server_cpu_s += self.server_cpu() - server_cpu

    def close(self) -> None:
        for http in self._http:
            http.close()

    def server_cpu(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def rss(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def summary(self) -> dict:
        latencies = sorted(self.latencies)
        return {"requests": len(latencies), "seconds": self.seconds, "throughput": len(latencies) / self.seconds,
                "p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
                "errors": self.errors, "rss_early": self.rss_early, "rss_end": self.rss(),
                "client_cpu": self.client_cpu, "server_cpu": self.server_cpu_s}


class EngineAlone:
    """`Engine.generate_many` in this process on the same requests, `batch` at a time (the server's batch size)."""

    def __init__(self, model: str | None, batch: int):
        from sfumato.engine import Engine

        self.engine, self.batch = Engine(model), batch
        self.images, self.seconds, self.cpu, self._next = 0, 0.0, 0.0, 0
        self._generate(batch)  # warm up: model load, prompt cache
        self.images, self.seconds, self.cpu = 0, 0.0, 0.0

    def _generate(self, count: int) -> None:
        from sfumato.requests import GenerationRequest

        requests = [GenerationRequest(PROMPTS[n % len(PROMPTS)], seed=n) for n in range(self._next, self._next + count)]
        self._next += count
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, count, self.batch):
            self.engine.generate_many(requests[first:first + self.batch])
        self.seconds += time.perf_counter() - started
        self.cpu += time.process_time() - cpu
        self.images += count

    run = _generate

    @property
    def throughput(self) -> float:
        return self.images / self.seconds


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
    parser.add_argument("--rounds", type=int, default=5, help="server and engine take turns this many times")
    parser.add_argument("--data-dir", default="/tmp/sfumato-server-bench")
    args = parser.parse_args()
    batch = 16
    engine = None
    per_round = -(-args.requests // args.rounds // batch) * batch  # whole batches
    results = {}
    for label, size, total in (("batched", batch, per_round * args.rounds), ("unbatched", 1, args.unbatched_requests)):
        shutil.rmtree(os.path.join(args.data_dir, label), ignore_errors=True)  # a fresh job store per run
        process, base = _start(args.model, size, os.path.join(args.data_dir, label))
        try:
            warm_up = Load(base, process, 2)
            warm_up.run(4)  # model load, first batches
            warm_up.close()
            if warm_up.errors:
                raise SystemExit(f"{warm_up.errors} of 4 warm-up requests failed: no ratio reported")
            load = Load(base, process, args.clients)
            if label == "batched":  # turns: the machine's speed drifts (shared cores), both see the same drift
                engine = EngineAlone(args.model, batch)
                for _ in range(args.rounds):
                    load.run(per_round)
                    engine.run(per_round)
            else:
                load.run(total)
            load.close()
            results[label] = load.summary()
        finally:
            process.terminate()
            process.wait(30)
        r = results[label]
        print(f"{label:9s} (--max-batch-size {size:2d}): {r['requests']} requests in {r['seconds']:.1f} s = "
              f"{r['throughput']:.2f} req/s; p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s; errors {r['errors']}; "
              f"mean batch {_mean_batch(os.path.join(args.data_dir, label)):.1f} jobs")
        if r["errors"]:  # a ratio over failed requests means nothing
            raise SystemExit(f"{r['errors']} requests failed: no ratio reported")
    b, u = results["batched"], results["unbatched"]
    print(f"engine alone, generate_many({batch}), in turns with the batched server: {engine.images} images in "
          f"{engine.seconds:.1f} s = {engine.throughput:.2f} images/s")
    print(f"throughput ratio batched / unbatched: {b['throughput'] / u['throughput']:.2f}x (target >= 3x)")
    print(f"server batched / engine generate_many: {b['throughput'] / engine.throughput:.2f} (target >= 0.90)")
    cores = os.cpu_count() or 1
    print(f"CPU per image: engine {engine.cpu / engine.images * 1000:.0f} ms; server {b['server_cpu'] / b['requests'] * 1000:.0f}"
          f" ms; clients {b['client_cpu'] / b['requests'] * 1000:.0f} ms (the clients took "
          f"{b['client_cpu'] / (b['seconds'] * cores):.1%} of this machine's {cores} cores during the server's turns)")
    print(f"engine CPU / server CPU per image: {engine.cpu / engine.images / (b['server_cpu'] / b['requests']):.2f} "
          f"(the server's own cost, without the load generator's share of the cores)")
    if b["rss_early"]:
        growth = (b["rss_end"] - b["rss_early"]) / b["rss_early"]
        print(f"server RSS after 100 requests {b['rss_early']:.0f} MiB, after {b['requests']}: {b['rss_end']:.0f} MiB "
              f"({growth:+.1%}; target <= +10%)")


if __name__ == "__main__":
    main()
